//! What `qi-host run` prints when the run ends: the result, a table per subtask, the usage
//! receipts, the synchronization points, the metrics and the report.

use crate::coord::{RunReport, SubtaskState};

/// A `markdown` string in an output (at the top or one level down), printed as is.
fn find_markdown(v: &serde_json::Value) -> Option<&str> {
    v.get("markdown").and_then(|m| m.as_str()).or_else(|| {
        v.as_object()?
            .values()
            .find_map(|x| x.get("markdown").and_then(|m| m.as_str()))
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn print_run(r: &RunReport, dir: &std::path::Path) {
    let done = r
        .results
        .iter()
        .filter(|s| s.state == SubtaskState::Completed)
        .count();
    println!(
        "run {}  task {}  strategy {}  failure handling {}",
        r.coordination_id,
        r.task_id,
        r.strategy.as_str(),
        r.failure_handling.as_str()
    );
    println!(
        "result: {} ({done}/{} subtasks completed) in {} ms",
        if r.success {
            "completed"
        } else if r.partial {
            "PARTIAL"
        } else {
            "FAILED"
        },
        r.results.len(),
        r.execution_time
    );
    if let Some(e) = &r.error {
        println!("reason: {e}");
    }
    if !r.missing.is_empty() {
        println!("missing outputs: {}", r.missing.join(", "));
    }
    println!(
        "\n{:<18} {:<10} {:<14} {:>8} {:>9} {:>14} {:>10}  note",
        "subtask", "state", "agent", "attempts", "time ms", "fuel", "memory"
    );
    for s in &r.results {
        let last = s.attempts.last();
        let usage = last.and_then(|a| a.usage.as_ref());
        let note = match (&s.error, s.resumed) {
            (_, true) => "resumed from the earlier run".to_string(),
            (Some(e), _) => e.clone(),
            (None, _) => s
                .attempts
                .iter()
                .filter_map(|a| {
                    a.then
                        .as_ref()
                        .map(|t| format!("#{} on {}: {} → {t}", a.attempt, a.agent, a.outcome))
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        println!(
            "{:<18} {:<10} {:<14} {:>8} {:>9} {:>14} {:>10}  {}",
            s.id,
            serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            s.agent.clone().unwrap_or_else(|| "-".into()),
            s.attempts.len(),
            last.map(|a| a.duration_ms.to_string())
                .unwrap_or_else(|| "-".into()),
            usage
                .map(|u| u.fuel_consumed.to_string())
                .unwrap_or_else(|| "-".into()),
            usage
                .map(|u| mib(u.peak_memory_bytes))
                .unwrap_or_else(|| "-".into()),
            note
        );
    }
    if !r.synchronization.is_empty() {
        println!("\nsynchronization points");
        for (id, o) in &r.synchronization {
            if let Some(f) = o.get("failed") {
                println!("  {id:<16} FAILED: {}", f.as_str().unwrap_or_default());
                continue;
            }
            let arrived = o["arrived"].as_array().map(Vec::len).unwrap_or(0);
            let absent = o["absent"].as_array().map(Vec::len).unwrap_or(0);
            let extra = match o["result"].get("decision") {
                Some(d) => format!(
                    "; decision {} ({})",
                    if d.is_null() {
                        "none".to_string()
                    } else {
                        d.as_str().unwrap_or_default().to_string()
                    },
                    o["result"]["rule"].as_str().unwrap_or_default()
                ),
                None => String::new(),
            };
            println!(
                "  {id:<16} {} arrived {arrived}/{}, waited {} ms{}{extra}",
                if o["complete"] == true {
                    "complete  "
                } else {
                    "incomplete"
                },
                arrived + absent,
                o["waitedMs"],
                if o["timedOut"] == true {
                    ", timed out"
                } else {
                    ""
                }
            );
        }
    }
    if !r.channels.is_empty() {
        println!("\nchannels");
        for (id, c) in &r.channels {
            println!(
                "  {id:<16} {:<13} sent {}, delivered {} ({} again), acked {}, expired {}, dead-lettered {}, left {}",
                c.kind.as_str(),
                c.sent,
                c.delivered,
                c.redelivered,
                c.acked,
                c.expired,
                c.dead_lettered.len(),
                c.left
            );
        }
    }
    println!("\nusage receipts (per agent instance)");
    println!(
        "  {:<22} {:<18} {:>14} {:>10} {:>9} {:>6} {:>6} {:>6}",
        "agent id", "subtask#attempt", "fuel", "peak mem", "wall ms", "calls", "files", "tools"
    );
    for s in &r.results {
        for a in &s.attempts {
            let Some(u) = &a.usage else { continue };
            println!(
                "  {:<22} {:<18} {:>14} {:>10} {:>9} {:>6} {:>6} {:>6}",
                a.agent_id.clone().unwrap_or_default(),
                format!("{}#{}", s.id, a.attempt),
                u.fuel_consumed,
                mib(u.peak_memory_bytes),
                u.wall_time_us / 1000,
                u.host_calls,
                u.file_operations,
                u.tool_calls
            );
        }
    }
    let model_rows: Vec<_> = r
        .results
        .iter()
        .flat_map(|s| s.attempts.iter().map(move |a| (s, a)))
        .filter_map(|(s, a)| Some((s, a, a.usage.as_ref()?)))
        .filter(|(_, _, u)| u.llm_calls > 0)
        .collect();
    if !model_rows.is_empty() {
        println!("\nmodel calls (per agent instance)");
        println!(
            "  {:<18} {:>6} {:>9} {:>12} {:>12} {:>12}",
            "subtask#attempt", "calls", "replayed", "input tok", "output tok", "cost USD"
        );
        for (s, a, u) in model_rows {
            println!(
                "  {:<18} {:>6} {:>9} {:>12} {:>12} {:>12.6}",
                format!("{}#{}", s.id, a.attempt),
                u.llm_calls,
                u.llm_replayed,
                u.input_tokens,
                u.output_tokens,
                u.cost
            );
        }
        let t = &r.metrics.total_resource_usage;
        println!(
            "  {:<18} {:>6} {:>9} {:>12} {:>12} {:>12.6}",
            "run total", t.llm_calls, t.llm_replayed, t.input_tokens, t.output_tokens, t.cost
        );
    }
    let m = &r.metrics;
    println!("\ncoordination metrics");
    println!(
        "  totalAgents {}  successful {}  failed {}  averageExecutionTime {:.1} ms",
        m.total_agents, m.successful_agents, m.failed_agents, m.average_execution_time
    );
    println!(
        "  totalResourceUsage: fuel {}, memory {:.1} MiB, execution {} ms, host calls {}, file ops {}, tool calls {}, network {}",
        m.total_resource_usage.fuel_consumed,
        m.total_resource_usage.memory_mb,
        m.total_resource_usage.execution_time_ms,
        m.total_resource_usage.host_calls,
        m.total_resource_usage.file_operations,
        m.total_resource_usage.tool_calls,
        m.total_resource_usage.network_requests
    );
    println!(
        "  communicationOverhead {:.1} ms over {} messages  coordinationEfficiency {:.2}  peak concurrency {}  sync points reached {}",
        m.communication_overhead,
        m.communication_events,
        m.coordination_efficiency,
        m.peak_concurrency,
        m.synchronization_points_reached
    );
    println!("\naggregated result (outputs of the final subtasks; --json prints everything)");
    if let Some(outputs) = r.aggregated_result.as_object() {
        for (id, out) in outputs {
            match find_markdown(out) {
                Some(md) => println!("[{id}]\n{md}"),
                None => {
                    let text = serde_json::to_string_pretty(out).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    println!("[{id}]");
                    for l in lines.iter().take(40) {
                        println!("{l}");
                    }
                    if lines.len() > 40 {
                        println!("... ({} more lines)", lines.len() - 40);
                    }
                }
            }
        }
    }
    println!(
        "\nstored in {}: outputs under context run/{}/output/*, events: qi-host events tail --data-dir {} --filter context=run/{}",
        dir.display(),
        r.coordination_id,
        dir.display(),
        r.coordination_id
    );
}
