//! The engine of one run's points: arrivals, absences, timers, resolution, resume and the
//! deadlock breaker.

use super::*;

/// The synchronization points of one run.
pub struct SyncEngine {
    points: HashMap<String, Arc<Point>>,
    checkpoints: Option<Checkpoints>,
    notices: Option<mpsc::UnboundedSender<SyncNotice>>,
    /// Most payload bytes all points together hold (`strategy.maxSyncBytes`).
    total_cap: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("points", &self.points.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SyncEngine {
    /// An engine for `points` (validated by the manifest). With a context store, checkpoints
    /// are stored durably under the run's id; `notices` receives what happens.
    pub fn new(
        points: &[SyncPointDef],
        context: Option<(ContextService, String)>,
        notices: Option<mpsc::UnboundedSender<SyncNotice>>,
    ) -> Arc<Self> {
        Arc::new(SyncEngine {
            points: points
                .iter()
                .map(|def| {
                    (
                        def.id.clone(),
                        Arc::new(Point {
                            def: def.clone(),
                            state: Mutex::new(PointState::default()),
                            resolved: watch::channel(None).0,
                        }),
                    )
                })
                .collect(),
            checkpoints: context.map(|(context, run_id)| Checkpoints { context, run_id }),
            notices,
            total_cap: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    fn notify(&self, n: SyncNotice) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(n);
        }
    }

    /// Tells the executor that `participant` waits in a call with its own timeout
    /// (`channels.receive`, `events.next`), so that it schedules again.
    pub fn idle(&self, participant: &str) {
        self.notify(SyncNotice::Idle {
            participant: participant.to_string(),
        });
    }

    /// Ids of the points `participant` takes part in.
    pub fn points_of(&self, participant: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .points
            .values()
            .filter(|p| p.def.participants.iter().any(|x| x == participant))
            .map(|p| p.def.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether a point resolved (`Ok`) or failed (`Err` with why), without copying its
    /// outcome; `None` while it is open.
    pub fn status(&self, point: &str) -> Option<Result<(), String>> {
        let p = self.points.get(point)?;
        let r = p.resolved.borrow();
        Some(match r.as_deref()? {
            Resolution::Done(_) => Ok(()),
            Resolution::Failed(m) => Err(m.clone()),
        })
    }

    /// The resolution of a point, if it resolved.
    pub fn outcome(&self, point: &str) -> Option<Result<SyncOutcome, String>> {
        let p = self.points.get(point)?;
        let r = p.resolved.borrow().clone()?;
        Some(match &*r {
            Resolution::Done(o) => Ok((**o).clone()),
            Resolution::Failed(m) => Err(m.clone()),
        })
    }

    /// [`outcome`](Self::outcome) without copying it.
    pub fn outcome_shared(&self, point: &str) -> Option<Result<Arc<SyncOutcome>, String>> {
        let p = self.points.get(point)?;
        let r = p.resolved.borrow().clone()?;
        Some(match &*r {
            Resolution::Done(o) => Ok(o.clone()),
            Resolution::Failed(m) => Err(m.clone()),
        })
    }

    /// Whether `participant` takes part in `point` (`None`: no such point).
    pub fn is_participant(&self, point: &str, participant: &str) -> Option<bool> {
        let p = self.points.get(point)?;
        Some(p.def.participants.iter().any(|x| x == participant))
    }

    /// Marks `point` resolved from an earlier run being resumed.
    pub fn preload(&self, point: &str, outcome: Result<SyncOutcome, String>) {
        if let Some(p) = self.points.get(point) {
            p.resolved.send_replace(Some(Arc::new(match outcome {
                Ok(o) => Resolution::Done(Arc::new(o)),
                Err(m) => Resolution::Failed(m),
            })));
        }
    }

    /// Resuming a run: `point` has no outcome that stands, and the participants in `finished`
    /// will not run again. What each of them gave before the crash counts as its arrival;
    /// one that gave nothing is absent. The point may resolve at once.
    pub async fn resume_point(&self, point_id: &str, finished: &BTreeSet<String>) {
        let Some(point) = self.points.get(point_id) else {
            return;
        };
        let mut given = Vec::new();
        for p in point
            .def
            .participants
            .iter()
            .filter(|p| finished.contains(*p))
        {
            let stored = match &self.checkpoints {
                Some(cp) => cp.load_arrival(point.def.point_type, point_id, p).await,
                None => None,
            };
            given.push((p.clone(), stored));
        }
        let r = {
            let mut st = point.state.lock().expect("sync point lock poisoned");
            if point.resolved.borrow().is_some() {
                return;
            }
            for (p, stored) in given {
                match stored {
                    Some(payload)
                        if st
                            .room_for(
                                point_id,
                                &p,
                                json_bytes(&payload),
                                point.def.max_result_bytes,
                            )
                            .is_ok() =>
                    {
                        st.absent.remove(&p);
                        if !st.index.contains_key(&p) {
                            st.put_arrival(&p, payload);
                        }
                    }
                    Some(_) => {
                        st.absent.insert(p);
                    }
                    None => {
                        st.absent.insert(p);
                    }
                }
            }
            evaluate(&point.def, &st, false)
        };
        if let Some(r) = r {
            self.resolve(point, r);
        }
    }

    /// A participant arrives at `point` with `payload` and waits for the resolution (shared by
    /// every participant).
    pub async fn arrive(
        self: &Arc<Self>,
        point_id: &str,
        participant: &str,
        call: SyncPointType,
        payload: Value,
    ) -> Result<Arc<SyncOutcome>, SyncFailure> {
        let point = self
            .points
            .get(point_id)
            .ok_or_else(|| SyncFailure::UnknownPoint(point_id.to_string()))?
            .clone();
        if point.def.point_type != call {
            return Err(SyncFailure::Invalid(format!(
                "`{point_id}` is a {} point; call {} (not {})",
                point.def.point_type.as_str(),
                point.def.point_type.wit_call(),
                call.wit_call()
            )));
        }
        if !point.def.participants.iter().any(|p| p == participant) {
            return Err(SyncFailure::Invalid(format!(
                "subtask `{participant}` is not a participant of `{point_id}` (participants: {})",
                point.def.participants.join(", ")
            )));
        }
        // Within the point's bound before anything is stored (checked again as it counts,
        // against arrivals made meanwhile).
        let bytes = json_bytes(&payload);
        let replaced = {
            let st = point.state.lock().expect("sync point lock poisoned");
            st.room_for(point_id, participant, bytes, point.def.max_result_bytes)?;
            st.payload_of(participant)
        };
        self.room_in_run(point_id, replaced, bytes)?;
        // Durable before it counts.
        if point.resolved.borrow().is_none()
            && let Some(cp) = &self.checkpoints
        {
            if call == SyncPointType::Checkpoint {
                cp.save(point_id, participant, &payload).await
            } else {
                cp.save_arrival(point_id, participant, &payload).await
            }
            .map_err(SyncFailure::Failed)?;
        }
        let mut rx = point.resolved.subscribe();
        let resolved_now = {
            let mut st = point.state.lock().expect("sync point lock poisoned");
            if rx.borrow().is_none() {
                let first = st.first_arrival.is_none();
                if first {
                    st.first_arrival = Some(Instant::now());
                }
                st.room_for(point_id, participant, bytes, point.def.max_result_bytes)?;
                st.absent.remove(participant);
                st.put_arrival(participant, payload);
                if first && let Some(ms) = point.def.timeout_ms {
                    self.start_timer(&point, ms);
                }
                evaluate(&point.def, &st, false)
            } else {
                None
            }
        };
        if let Some(r) = resolved_now {
            self.resolve(&point, r);
        }
        let waiting = rx.borrow().is_none();
        // Inside the call until it returns or is dropped (the agent terminated).
        let _inside = Inside::enter(&point, participant);
        if waiting {
            self.notify(SyncNotice::Waiting {
                participant: participant.to_string(),
                point: point_id.to_string(),
            });
        }
        let r = loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                break r;
            }
            if rx.changed().await.is_err() {
                break Arc::new(Resolution::Failed(format!(
                    "point `{point_id}` was dropped"
                )));
            }
        };
        if waiting {
            self.notify(SyncNotice::Released {
                participant: participant.to_string(),
                point: point_id.to_string(),
                at: Instant::now(),
            });
        }
        match &*r {
            Resolution::Done(o) => Ok(o.clone()),
            Resolution::Failed(m) => Err(SyncFailure::Failed(m.clone())),
        }
    }

    /// The state `participant` stored at checkpoint `point` (this run or the run it resumes).
    pub async fn restore(
        &self,
        point_id: &str,
        participant: &str,
    ) -> Result<Option<Value>, SyncFailure> {
        let point = self
            .points
            .get(point_id)
            .ok_or_else(|| SyncFailure::UnknownPoint(point_id.to_string()))?;
        if point.def.point_type != SyncPointType::Checkpoint {
            return Err(SyncFailure::Invalid(format!(
                "`{point_id}` is a {} point; only checkpoints hold state",
                point.def.point_type.as_str()
            )));
        }
        if !point.def.participants.iter().any(|p| p == participant) {
            return Err(SyncFailure::Invalid(format!(
                "subtask `{participant}` is not a participant of `{point_id}`"
            )));
        }
        Ok(match &self.checkpoints {
            Some(cp) => cp.load(point_id, participant).await,
            None => None,
        })
    }

    /// `participant` is over (failed, terminated, skipped, cancelled or done): no open point
    /// waits for it any more. At a barrier it counts as absent even if it had arrived (it died
    /// waiting, so it cannot go on with the others); at a decision, aggregation or checkpoint
    /// what it gave before it ended still counts.
    pub fn mark_absent(&self, participant: &str) {
        for point in self.points.values() {
            if !point.def.participants.iter().any(|p| p == participant) {
                continue;
            }
            let r = {
                let mut st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() {
                    continue;
                }
                if st.index.contains_key(participant) {
                    if point.def.point_type != SyncPointType::Barrier {
                        continue;
                    }
                    st.remove_arrival(participant);
                }
                st.absent.insert(participant.to_string());
                evaluate(&point.def, &st, false)
            };
            if let Some(r) = r {
                self.resolve(point, r);
            }
        }
    }

    /// `participant`'s attempt ended while it may have waited at a barrier that is still open:
    /// its arrival no longer stands (a retry arrives again). It is not absent: it may run
    /// again.
    pub fn withdraw(&self, participant: &str) {
        for point in self.points.values() {
            if point.def.point_type != SyncPointType::Barrier || point.resolved.borrow().is_some() {
                continue;
            }
            let mut st = point.state.lock().expect("sync point lock poisoned");
            st.remove_arrival(participant);
        }
    }

    /// Sets the most payload bytes all points of the run hold together (default: no bound
    /// beyond each point's own).
    pub fn limit_total_bytes(&self, cap: u64) {
        self.total_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    /// Payload bytes all points hold now.
    pub fn held_bytes(&self) -> u64 {
        self.points
            .values()
            .map(|p| {
                p.state
                    .lock()
                    .expect("sync point lock poisoned")
                    .payload_bytes
            })
            .fold(0, u64::saturating_add)
    }

    /// Whether the run's points can hold `bytes` more in place of `replaced`. Checked before
    /// an arrival is stored, one point lock at a time: arrivals racing at different points may
    /// pass the bound by their own payloads (each at most `MAX_SYNC_PAYLOAD_BYTES`).
    fn room_in_run(&self, point: &str, replaced: u64, bytes: u64) -> Result<(), SyncFailure> {
        let cap = self.total_cap.load(std::sync::atomic::Ordering::Relaxed);
        let total = self
            .held_bytes()
            .saturating_sub(replaced)
            .saturating_add(bytes);
        if total > cap {
            return Err(SyncFailure::InvalidPayload(format!(
                "the run's points would hold {total} bytes of payloads with this one at `{point}` \
                 ({bytes} bytes); strategy.maxSyncBytes is {cap}"
            )));
        }
        Ok(())
    }

    /// Participant → the open point it waits at now: inside a sync call on a point not
    /// resolved. (An arrival that still counts but whose call ended, e.g. a vote of an attempt
    /// that failed, is not waiting.)
    pub fn waiting_at(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for point in self.points.values() {
            if point.resolved.borrow().is_some() {
                continue;
            }
            let st = point.state.lock().expect("sync point lock poisoned");
            for p in st.inside.keys() {
                out.insert(p.clone(), point.def.id.clone());
            }
        }
        out
    }

    /// Whether an open point someone waits at has a timer still to fire that will end it (its
    /// condition is `timeout`, or its `onTimeout` is `proceed` or `fail`): then a run whose
    /// agents all wait is not stuck yet.
    pub fn timer_pending(&self) -> bool {
        self.points.values().any(|point| {
            if point.resolved.borrow().is_some() {
                return false;
            }
            let st = point.state.lock().expect("sync point lock poisoned");
            !st.inside.is_empty()
                && point.def.timeout_ms.is_some()
                && st.first_arrival.is_some()
                && !st.timed_out
                && (point.def.condition == SyncCondition::Timeout
                    || point.def.on_timeout != OnTimeout::Wait)
        })
    }

    /// Ends every open point someone waits at (inside a sync call on it), because nothing can
    /// ever bring the rest (`reason`): as its `onTimeout` says, at once: `proceed` releases the
    /// arrivals with `complete = false`; `fail` and `wait` (which would wait for ever) fail the
    /// point. A point nobody waits at is left alone.
    pub fn break_deadlock(&self, reason: &str) {
        // Every point is resolved before any waiter is woken: a participant released from one
        // point must find the next one already ended, not complete it (two participants each
        // waiting at the point the other has not reached).
        let mut ended = Vec::new();
        for point in self.points.values() {
            let r = {
                let st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() || st.inside.is_empty() {
                    continue;
                }
                match point.def.on_timeout {
                    OnTimeout::Proceed => {
                        Resolution::Done(Arc::new(outcome(&point.def, &st, false)))
                    }
                    OnTimeout::Wait | OnTimeout::Fail => {
                        Resolution::Failed(format!("point `{}`: {reason}", point.def.id))
                    }
                }
            };
            if self.resolve_quietly(point, r) {
                ended.push(point);
            }
        }
        for point in ended {
            point.resolved.send_modify(|_| {});
        }
    }

    /// Fails every open point (the run is being cancelled).
    pub fn cancel_all(&self, reason: &str) {
        for point in self.points.values() {
            if point.resolved.borrow().is_none() {
                self.resolve(point, Resolution::Failed(reason.to_string()));
            }
        }
    }

    fn start_timer(self: &Arc<Self>, point: &Arc<Point>, ms: u64) {
        let weak_engine: Weak<SyncEngine> = Arc::downgrade(self);
        let weak_point = Arc::downgrade(point);
        // From the arrival, not from whenever the timer task is first polled.
        let now = tokio::time::Instant::now();
        // Bounded by the manifest check; a deadline past what `Instant` holds never fires.
        let deadline = now
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30));
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let (Some(engine), Some(point)) = (weak_engine.upgrade(), weak_point.upgrade()) else {
                return;
            };
            let r = {
                let mut st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() {
                    return;
                }
                st.timed_out = true;
                evaluate(&point.def, &st, true)
            };
            match r {
                Some(r) => engine.resolve(&point, r),
                None => engine.notify(SyncNotice::TimedOutWaiting {
                    point: point.def.id.clone(),
                }),
            }
        });
    }

    /// [`resolve`](Self::resolve) without waking the point's waiters (an arrival sees the
    /// resolution at once); `true` when it resolved it.
    fn resolve_quietly(&self, point: &Point, r: Resolution) -> bool {
        let at = Instant::now();
        let mut resolved = false;
        point.resolved.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(Arc::new(r.clone()));
                self.notify(SyncNotice::Resolved {
                    point: point.def.id.clone(),
                    outcome: match r.clone() {
                        Resolution::Done(o) => Ok(o),
                        Resolution::Failed(m) => Err(m),
                    },
                    at,
                });
                resolved = true;
            }
            false
        });
        resolved
    }

    fn resolve(&self, point: &Point, r: Resolution) {
        let at = Instant::now();
        point.resolved.send_if_modified(|cur| {
            if cur.is_some() {
                return false;
            }
            *cur = Some(Arc::new(r.clone()));
            // Queued while the new value is not yet visible to waiters: the notice of the
            // resolution precedes anything a released participant does next.
            self.notify(SyncNotice::Resolved {
                point: point.def.id.clone(),
                outcome: match r {
                    Resolution::Done(o) => Ok(o),
                    Resolution::Failed(m) => Err(m),
                },
                at,
            });
            true
        });
    }
}
