//! The condition language of access-policy rules.
//!
//! ```text
//! expr    := or
//! or      := and (("||" | "or") and)*
//! and     := unary (("&&" | "and") unary)*
//! unary   := ("!" | "not") unary | compare
//! compare := value (op value)?
//! op      := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "contains" | "matches"
//! value   := attribute | "string" | 'string' | number | true | false | [value, ...] | "(" expr ")"
//! ```
//!
//! Attributes: `agent.id`, `agent.name` (the host-assigned name: the spec's `name`, never the one `describe()` declares), `agent.trust` (`none` < `low` < `medium` < `high` < `full`),
//! `agent.capabilities` (list), `agent.isolation` (`sandbox`, `restricted`, `monitored`),
//! `resource.kind` (`context`, `events`, `sync`, `tool`, `file`, `network`), `resource.id`,
//! `resource.type`, `resource.owner`, `resource.labels` (list), `action`.
//!
//! `<`, `<=`, `>`, `>=` compare numbers, or trust levels when either side is `agent.trust`
//! (`agent.trust >= "medium"`). `x in list` and `list contains x` test membership; `x matches
//! "glob*"` matches a glob. A bare value is true when it is `true`, a non-empty string or list,
//! or a non-zero number. Conditions are parsed when a policy is loaded; an error names the
//! column and what was expected there.

use super::TrustLevel;
use std::fmt;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Val),
    /// An attribute.
    Attr(Attr),
    /// A list of expressions.
    List(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// A comparison.
    Cmp(Box<Expr>, Op, Box<Expr>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in`
    In,
    /// `contains`
    Contains,
    /// `matches`
    Matches,
}

/// An attribute of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    /// `agent.id`
    AgentId,
    /// `agent.name` (the host-assigned name: the spec's `name`, never the one `describe()` declares)
    AgentName,
    /// `agent.trust`
    AgentTrust,
    /// `agent.capabilities`
    AgentCapabilities,
    /// `agent.isolation`
    AgentIsolation,
    /// `resource.kind`
    ResourceKind,
    /// `resource.id`
    ResourceId,
    /// `resource.type`
    ResourceType,
    /// `resource.owner`
    ResourceOwner,
    /// `resource.labels`
    ResourceLabels,
    /// `action`
    Action,
}

const ATTRS: &[(&str, Attr)] = &[
    ("agent.id", Attr::AgentId),
    ("agent.name", Attr::AgentName),
    ("agent.trust", Attr::AgentTrust),
    ("agent.capabilities", Attr::AgentCapabilities),
    ("agent.isolation", Attr::AgentIsolation),
    ("resource.kind", Attr::ResourceKind),
    ("resource.id", Attr::ResourceId),
    ("resource.type", Attr::ResourceType),
    ("resource.owner", Attr::ResourceOwner),
    ("resource.labels", Attr::ResourceLabels),
    ("action", Attr::Action),
];

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Text.
    Str(String),
    /// Number.
    Num(f64),
    /// Boolean.
    Bool(bool),
    /// List.
    List(Vec<Val>),
    /// Absent attribute.
    Null,
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Num(n) => *n != 0.0,
            Val::Bool(b) => *b,
            Val::List(l) => !l.is_empty(),
            Val::Null => false,
        }
    }
}

/// What a condition is evaluated against.
pub trait Facts {
    /// The value of an attribute.
    fn get(&self, attr: Attr) -> Val;
}

/// A parse error: column (1-based) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    End,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let sym = match two.as_str() {
            "==" => Some("=="),
            "!=" => Some("!="),
            "<=" => Some("<="),
            ">=" => Some(">="),
            "&&" => Some("&&"),
            "||" => Some("||"),
            _ => None,
        };
        if let Some(s) = sym {
            out.push((col, Tok::Sym(s)));
            i += 2;
            continue;
        }
        match c {
            '<' => out.push((col, Tok::Sym("<"))),
            '>' => out.push((col, Tok::Sym(">"))),
            '!' => out.push((col, Tok::Sym("!"))),
            '[' => out.push((col, Tok::LBracket)),
            ']' => out.push((col, Tok::RBracket)),
            '(' => out.push((col, Tok::LParen)),
            ')' => out.push((col, Tok::RParen)),
            ',' => out.push((col, Tok::Comma)),
            '"' | '\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(ParseError {
                                column: col,
                                message: "unterminated string".into(),
                            });
                        }
                        Some(&ch) if ch == quote => break,
                        Some('\\') if chars.get(i + 1).is_some() => {
                            s.push(chars[i + 1]);
                            i += 2;
                            continue;
                        }
                        Some(&ch) => s.push(ch),
                    }
                    i += 1;
                }
                out.push((col, Tok::Str(s)));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || *c == '.')
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = text.parse::<f64>().map_err(|_| ParseError {
                    column: col,
                    message: format!("`{text}` is not a number"),
                })?;
                out.push((col, Tok::Num(n)));
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '.' || *c == '-')
                {
                    i += 1;
                }
                out.push((col, Tok::Ident(chars[start..i].iter().collect())));
                continue;
            }
            other => {
                return Err(ParseError {
                    column: col,
                    message: format!("unexpected `{other}`"),
                });
            }
        }
        i += 1;
    }
    out.push((chars.len() + 1, Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].1
    }
    fn col(&self) -> usize {
        self.toks[self.pos].0
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].1.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.col(),
            message: message.into(),
        })
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == w)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Tok::Sym("||")) || self.is_word("or") {
            self.next();
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Tok::Sym("&&")) || self.is_word("and") {
            self.next();
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if matches!(self.peek(), Tok::Sym("!")) || self.is_word("not") {
            self.next();
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.compare()
    }
    fn compare(&mut self) -> Result<Expr, ParseError> {
        let left = self.value()?;
        let op = match self.peek() {
            Tok::Sym("==") => Op::Eq,
            Tok::Sym("!=") => Op::Ne,
            Tok::Sym("<") => Op::Lt,
            Tok::Sym("<=") => Op::Le,
            Tok::Sym(">") => Op::Gt,
            Tok::Sym(">=") => Op::Ge,
            Tok::Ident(w) if w == "in" => Op::In,
            Tok::Ident(w) if w == "contains" => Op::Contains,
            Tok::Ident(w) if w == "matches" => Op::Matches,
            _ => return Ok(left),
        };
        self.next();
        let right = self.value()?;
        if op == Op::Matches && !matches!(right, Expr::Lit(Val::Str(_))) {
            return self
                .err("`matches` takes a quoted glob, e.g. `resource.id matches \"plan-*\"`");
        }
        Ok(Expr::Cmp(Box::new(left), op, Box::new(right)))
    }
    fn value(&mut self) -> Result<Expr, ParseError> {
        let col = self.col();
        match self.next() {
            Tok::Str(s) => Ok(Expr::Lit(Val::Str(s))),
            Tok::Num(n) => Ok(Expr::Lit(Val::Num(n))),
            Tok::Ident(w) if w == "true" => Ok(Expr::Lit(Val::Bool(true))),
            Tok::Ident(w) if w == "false" => Ok(Expr::Lit(Val::Bool(false))),
            Tok::Ident(w) => match ATTRS.iter().find(|(n, _)| *n == w) {
                Some((_, a)) => Ok(Expr::Attr(*a)),
                None => Err(ParseError {
                    column: col,
                    message: format!(
                        "unknown attribute `{w}`; known: {}",
                        ATTRS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                }),
            },
            Tok::LParen => {
                let e = self.or()?;
                if self.next() != Tok::RParen {
                    return Err(ParseError {
                        column: col,
                        message: "this `(` is never closed".into(),
                    });
                }
                Ok(e)
            }
            Tok::LBracket => {
                let mut items = Vec::new();
                if *self.peek() == Tok::RBracket {
                    self.next();
                    return Ok(Expr::List(items));
                }
                loop {
                    items.push(self.value()?);
                    match self.next() {
                        Tok::Comma => continue,
                        Tok::RBracket => break,
                        _ => {
                            return Err(ParseError {
                                column: self.toks[self.pos.saturating_sub(1)].0,
                                message: "expected `,` or `]` in a list".into(),
                            });
                        }
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::End => Err(ParseError {
                column: col,
                message: "expected a value, found the end of the condition".into(),
            }),
            other => Err(ParseError {
                column: col,
                message: format!("expected a value, found {}", describe(&other)),
            }),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Sym(s) => format!("`{s}`"),
        Tok::RBracket => "`]`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        other => format!("{other:?}"),
    }
}

/// Whether `e` reads any of `attrs`.
pub fn uses(e: &Expr, attrs: &[Attr]) -> bool {
    match e {
        Expr::Lit(_) => false,
        Expr::Attr(a) => attrs.contains(a),
        Expr::List(items) => items.iter().any(|x| uses(x, attrs)),
        Expr::Not(x) => uses(x, attrs),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(a, _, b) => uses(a, attrs) || uses(b, attrs),
    }
}

/// Parses a condition.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.or()?;
    if *p.peek() != Tok::End {
        return p.err(format!(
            "unexpected {} after a complete condition (missing `&&` or `||`?)",
            describe(p.peek())
        ));
    }
    Ok(e)
}

fn eval_val(e: &Expr, f: &dyn Facts) -> Val {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Attr(a) => f.get(*a),
        Expr::List(items) => Val::List(items.iter().map(|x| eval_val(x, f)).collect()),
        other => Val::Bool(eval(other, f)),
    }
}

fn trust_of(v: &Val) -> Option<TrustLevel> {
    match v {
        Val::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// Evaluates a condition.
pub fn eval(e: &Expr, f: &dyn Facts) -> bool {
    match e {
        Expr::Not(x) => !eval(x, f),
        Expr::And(a, b) => eval(a, f) && eval(b, f),
        Expr::Or(a, b) => eval(a, f) || eval(b, f),
        Expr::Cmp(a, op, b) => {
            let trusty = matches!(**a, Expr::Attr(Attr::AgentTrust))
                || matches!(**b, Expr::Attr(Attr::AgentTrust));
            let (l, r) = (eval_val(a, f), eval_val(b, f));
            let ord = if trusty {
                trust_of(&l).zip(trust_of(&r)).map(|(x, y)| x.cmp(&y))
            } else {
                match (&l, &r) {
                    (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
                    (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
                    _ => None,
                }
            };
            match op {
                Op::Eq => l == r || ord == Some(std::cmp::Ordering::Equal),
                Op::Ne => !(l == r || ord == Some(std::cmp::Ordering::Equal)),
                Op::Lt => ord == Some(std::cmp::Ordering::Less),
                Op::Le => ord.is_some_and(|o| o != std::cmp::Ordering::Greater),
                Op::Gt => ord == Some(std::cmp::Ordering::Greater),
                Op::Ge => ord.is_some_and(|o| o != std::cmp::Ordering::Less),
                Op::In => matches!(&r, Val::List(items) if items.contains(&l)),
                Op::Contains => match (&l, &r) {
                    (Val::List(items), x) => items.contains(x),
                    (Val::Str(s), Val::Str(x)) => s.contains(x.as_str()),
                    _ => false,
                },
                Op::Matches => match (&l, &r) {
                    (Val::Str(s), Val::Str(g)) => globset::Glob::new(g)
                        .map(|g| g.compile_matcher().is_match(s))
                        .unwrap_or(false),
                    _ => false,
                },
            }
        }
        other => eval_val(other, f).truthy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct F;
    impl Facts for F {
        fn get(&self, a: Attr) -> Val {
            match a {
                Attr::AgentTrust => Val::Str("medium".into()),
                Attr::AgentCapabilities => Val::List(vec![Val::Str("code-review".into())]),
                Attr::ResourceId => Val::Str("plan-7".into()),
                Attr::Action => Val::Str("get".into()),
                _ => Val::Null,
            }
        }
    }

    #[test]
    fn every_operator_evaluates_both_ways() {
        let t = |s: &str| eval(&parse(s).unwrap(), &F);
        assert!(t(r#"agent.trust >= "medium""#));
        assert!(!t(r#"agent.trust > "medium""#));
        assert!(t(
            r#"agent.trust < "full" && "code-review" in agent.capabilities"#
        ));
        assert!(t(r#"agent.capabilities contains "code-review" or false"#));
        assert!(t(
            r#"resource.id matches "plan-*" and not (action == "put")"#
        ));
        assert!(t(r#"action in ["get", "ids"]"#));
        assert!(!t(r#"resource.owner == "alice""#));
        assert!(!t("resource.owner"));
        // The README's operators, each once true and once false.
        for (condition, want) in [
            (r#"action != "put""#, true),
            (r#"action != "get""#, false),
            (r#"agent.trust <= "medium""#, true),
            (r#"agent.trust <= "low""#, false),
            (r#"agent.trust == "medium""#, true),
            (r#"agent.trust < "medium""#, false),
            (r#"action == "put" || action == "get""#, true),
            (r#"action == "put" || action == "ids""#, false),
            (r#"action == "get" && agent.trust > "low""#, true),
            (r#"action == "get" && agent.trust > "high""#, false),
            (r#"!(action == "put")"#, true),
            (r#"!(action == "get")"#, false),
            (r#"action in ["put", "ids"]"#, false),
            (r#"agent.capabilities contains "deploy""#, false),
            (r#"resource.id matches "draft-*""#, false),
        ] {
            assert_eq!(t(condition), want, "{condition}");
        }
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = parse(r#"agent.trst >= "low""#).unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("unknown attribute `agent.trst`"));
        let e = parse(r#"action == "get" action"#).unwrap_err();
        assert_eq!(e.column, 17);
        let e = parse(r#"(action == "get""#).unwrap_err();
        assert!(e.message.contains("never closed"), "{e}");
        let e = parse(r#"resource.id matches 3"#).unwrap_err();
        assert!(e.message.contains("quoted glob"), "{e}");
        let e = parse(r#"action == "get"#).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
    }
}
