//! Access control expressions (ACEs), MapR style.
//!
//! ```text
//! expr    := or
//! or      := and ('|' and)*
//! and     := unary ('&' unary)*
//! unary   := '!' unary | primary
//! primary := 'u:' NAME | 'g:' NAME | 'p' | '(' or ')'
//! NAME    := [A-Za-z0-9._@-]+
//! ```
//!
//! `u:NAME` matches the principal's name, `g:NAME` one of its group names,
//! `p` (public) every authenticated principal. Precedence is `!` > `&` > `|`;
//! whitespace is allowed between tokens. The empty (or all-whitespace)
//! expression allows nobody.
//!
//! Evaluation is pure expression logic: the administrator bypass and ticket
//! scopes are the caller's business (see [`crate::principal::Principal`]).
//! Error positions count characters from 0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::principal::Principal;

/// Longest ACE text accepted.
pub const ACE_LEN_MAX_BYTES: usize = 16 * 1024;
/// Deepest nesting of `(` and `!` accepted (keeps evaluation recursion bounded).
pub const ACE_DEPTH_MAX: usize = 32;

/// A parsed expression. `And` and `Or` always have at least two operands; a
/// chain `a | b | c` is one `Or` of three, while `(a | b) | c` keeps its
/// parentheses as a nested `Or`, so display and parse are exact inverses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AceExpr {
    User(String),
    Group(String),
    Public,
    Not(Box<AceExpr>),
    And(Vec<AceExpr>),
    Or(Vec<AceExpr>),
}

impl AceExpr {
    fn allows(&self, p: &Principal) -> bool {
        match self {
            AceExpr::User(name) => p.name == *name,
            AceExpr::Group(group) => p.in_group(group),
            AceExpr::Public => true,
            AceExpr::Not(e) => !e.allows(p),
            AceExpr::And(es) => es.iter().all(|e| e.allows(p)),
            AceExpr::Or(es) => es.iter().any(|e| e.allows(p)),
        }
    }

    /// Binding strength, for minimal parenthesisation.
    fn precedence(&self) -> u8 {
        match self {
            AceExpr::Or(_) => 1,
            AceExpr::And(_) => 2,
            AceExpr::Not(_) => 3,
            AceExpr::User(_) | AceExpr::Group(_) | AceExpr::Public => 4,
        }
    }

    /// Writes the expression, in parentheses if it binds weaker than `min`.
    fn write(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        let parens = self.precedence() < min;
        if parens {
            f.write_str("(")?;
        }
        match self {
            AceExpr::User(name) => write!(f, "u:{name}")?,
            AceExpr::Group(name) => write!(f, "g:{name}")?,
            AceExpr::Public => f.write_str("p")?,
            AceExpr::Not(e) => {
                f.write_str("!")?;
                e.write(f, 3)?;
            }
            // Operands of a chain bind tighter than the chain itself, so a
            // nested chain of the same operator keeps its parentheses.
            AceExpr::And(es) => write_chain(f, es, " & ", 3)?,
            AceExpr::Or(es) => write_chain(f, es, " | ", 2)?,
        }
        if parens {
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn write_chain(f: &mut fmt::Formatter<'_>, es: &[AceExpr], op: &str, min: u8) -> fmt::Result {
    for (i, e) in es.iter().enumerate() {
        if i > 0 {
            f.write_str(op)?;
        }
        e.write(f, min)?;
    }
    Ok(())
}

impl fmt::Display for AceExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 0)
    }
}

/// An ACE could not be parsed. `message` says where (character position) and
/// what would be valid there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AceError {
    pub pos: usize,
    pub message: String,
}

/// A parsed access control expression. The default is the empty ACE, which
/// allows nobody.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Ace {
    expr: Option<AceExpr>,
}

impl Ace {
    /// Parses an ACE (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Ace, AceError> {
        if text.len() > ACE_LEN_MAX_BYTES {
            return Err(AceError {
                pos: 0,
                message: format!(
                    "the expression is {} bytes long, more than the {ACE_LEN_MAX_BYTES}-byte \
                     limit: use groups instead of long lists of users",
                    text.len()
                ),
            });
        }
        let mut parser = Parser::new(text);
        if parser.peek()?.tok == Tok::End {
            return Ok(Ace { expr: None });
        }
        let expr = parser.or()?;
        let next = parser.next()?;
        match next.tok {
            Tok::End => Ok(Ace { expr: Some(expr) }),
            Tok::RParen => Err(AceError {
                pos: next.pos,
                message: format!(
                    "unexpected ')' at position {}: there is no '(' to close",
                    next.pos
                ),
            }),
            _ => Err(AceError {
                pos: next.pos,
                message: format!(
                    "unexpected {} at position {}: expected '&', '|' or the end of the expression",
                    next.tok, next.pos
                ),
            }),
        }
    }

    /// Whether the expression allows `p`. The empty ACE allows nobody.
    pub fn allows(&self, p: &Principal) -> bool {
        self.expr.as_ref().is_some_and(|e| e.allows(p))
    }

    /// Whether this is the empty ACE (allows nobody).
    pub fn is_empty(&self) -> bool {
        self.expr.is_none()
    }

    /// The expression tree; `None` for the empty ACE.
    pub fn expr(&self) -> Option<&AceExpr> {
        self.expr.as_ref()
    }
}

/// The canonical text: single spaces around `&` and `|`, minimal parentheses.
/// It parses back to an equal `Ace`.
impl fmt::Display for Ace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => Ok(()),
            Some(e) => e.write(f, 0),
        }
    }
}

impl FromStr for Ace {
    type Err = AceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ace::parse(s)
    }
}

/// Stored and sent as its canonical text.
impl Serialize for Ace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ace::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    User(String),
    Group(String),
    Public,
    Not,
    And,
    Or,
    LParen,
    RParen,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::User(n) => write!(f, "'u:{n}'"),
            Tok::Group(n) => write!(f, "'g:{n}'"),
            Tok::Public => f.write_str("'p'"),
            Tok::Not => f.write_str("'!'"),
            Tok::And => f.write_str("'&'"),
            Tok::Or => f.write_str("'|'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::End => f.write_str("end of the expression"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Character position of the token's first character.
    pos: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
}

const EXPECTED_TERM: &str = "expected u:NAME, g:NAME, p, '!' or '('";

/// Recursive-descent parser with a lazy lexer, so errors are reported at the
/// leftmost problem.
struct Parser {
    chars: Vec<char>,
    at: usize,
    peeked: Option<Token>,
    depth: usize,
}

impl Parser {
    fn new(text: &str) -> Parser {
        Parser {
            chars: text.chars().collect(),
            at: 0,
            peeked: None,
            depth: 0,
        }
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self.at < self.chars.len() && is_name_char(self.chars[self.at]) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn lex(&mut self) -> Result<Token, AceError> {
        while self.at < self.chars.len() && self.chars[self.at].is_whitespace() {
            self.at += 1;
        }
        let pos = self.at;
        let Some(&c) = self.chars.get(pos) else {
            return Ok(Token { tok: Tok::End, pos });
        };
        let single = match c {
            '!' => Some(Tok::Not),
            '&' => Some(Tok::And),
            '|' => Some(Tok::Or),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            _ => None,
        };
        if let Some(tok) = single {
            self.at += 1;
            return Ok(Token { tok, pos });
        }
        if !is_name_char(c) {
            return Err(AceError {
                pos,
                message: format!(
                    "unexpected character {c:?} at position {pos}: an ACE is made of \
                     u:NAME, g:NAME, p, '!', '&', '|' and parentheses"
                ),
            });
        }
        let word = self.word();
        let colon = self.chars.get(self.at) == Some(&':');
        let tok = match (word.as_str(), colon) {
            ("u" | "g", true) => {
                self.at += 1;
                let name_pos = self.at;
                let name = self.word();
                if name.is_empty() {
                    return Err(AceError {
                        pos: name_pos,
                        message: format!(
                            "expected a name after '{word}:' at position {name_pos}: names \
                             use letters, digits and . _ @ -"
                        ),
                    });
                }
                if word == "u" {
                    Tok::User(name)
                } else {
                    Tok::Group(name)
                }
            }
            ("p", false) => Tok::Public,
            _ => {
                return Err(AceError {
                    pos,
                    message: format!(
                        "unknown term '{word}' at position {pos}: use u:NAME, g:NAME or p"
                    ),
                })
            }
        };
        Ok(Token { tok, pos })
    }

    fn peek(&mut self) -> Result<&Token, AceError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lex()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn next(&mut self) -> Result<Token, AceError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn or(&mut self) -> Result<AceExpr, AceError> {
        let mut items = vec![self.and()?];
        while self.peek()?.tok == Tok::Or {
            self.next()?;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            AceExpr::Or(items)
        })
    }

    fn and(&mut self) -> Result<AceExpr, AceError> {
        let mut items = vec![self.unary()?];
        while self.peek()?.tok == Tok::And {
            self.next()?;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            AceExpr::And(items)
        })
    }

    fn enter(&mut self, pos: usize) -> Result<(), AceError> {
        self.depth += 1;
        if self.depth > ACE_DEPTH_MAX {
            return Err(AceError {
                pos,
                message: format!(
                    "the expression nests deeper than {ACE_DEPTH_MAX} levels at position \
                     {pos}: simplify it"
                ),
            });
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<AceExpr, AceError> {
        let token = self.next()?;
        match token.tok {
            Tok::User(name) => Ok(AceExpr::User(name)),
            Tok::Group(name) => Ok(AceExpr::Group(name)),
            Tok::Public => Ok(AceExpr::Public),
            Tok::Not => {
                self.enter(token.pos)?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(AceExpr::Not(Box::new(inner)))
            }
            Tok::LParen => {
                self.enter(token.pos)?;
                let inner = self.or()?;
                let close = self.next()?;
                match close.tok {
                    Tok::RParen => {
                        self.depth -= 1;
                        Ok(inner)
                    }
                    Tok::End => Err(AceError {
                        pos: token.pos,
                        message: format!(
                            "unclosed '(' opened at position {}: add the missing ')'",
                            token.pos
                        ),
                    }),
                    other => Err(AceError {
                        pos: close.pos,
                        message: format!(
                            "unexpected {other} at position {}: expected '&', '|' or ')'",
                            close.pos
                        ),
                    }),
                }
            }
            Tok::End => Err(AceError {
                pos: token.pos,
                message: format!(
                    "unexpected end of the expression at position {}: {EXPECTED_TERM}",
                    token.pos
                ),
            }),
            other @ (Tok::And | Tok::Or | Tok::RParen) => Err(AceError {
                pos: token.pos,
                message: format!(
                    "unexpected {other} at position {}: {EXPECTED_TERM}",
                    token.pos
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::PrincipalKind;
    use proptest::prelude::*;

    fn who(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: name.into(),
            kind: PrincipalKind::User,
            uid: 1000,
            gids: vec![],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scope: None,
        }
    }

    fn ace(s: &str) -> Ace {
        Ace::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> AceError {
        Ace::parse(s).expect_err(s)
    }

    #[test]
    fn empty_allows_nobody() {
        for s in ["", "   ", "\t\n"] {
            let a = ace(s);
            assert!(a.is_empty());
            assert!(!a.allows(&who("admin", &["admin"])));
            assert_eq!(a.to_string(), "");
        }
        assert_eq!(Ace::default(), ace(""));
    }

    #[test]
    fn terms() {
        let alice = who("alice", &["ops", "staff"]);
        let bob = who("bob", &["staff"]);
        assert!(ace("u:alice").allows(&alice));
        assert!(!ace("u:alice").allows(&bob));
        assert!(ace("g:ops").allows(&alice));
        assert!(!ace("g:ops").allows(&bob));
        assert!(ace("p").allows(&bob));
        assert!(ace("u:svc.kafka-1@prod_x").allows(&who("svc.kafka-1@prod_x", &[])));
        // u: matches names, g: matches groups, never the other way round.
        assert!(!ace("u:ops").allows(&alice));
        assert!(!ace("g:alice").allows(&alice));
    }

    #[test]
    fn precedence_not_and_or() {
        let alice = who("alice", &["ops"]);
        let bob = who("bob", &["ops"]);
        let carol = who("carol", &[]);
        // u:carol | (g:ops & (!u:bob))
        let a = ace("u:carol | g:ops & !u:bob");
        assert!(a.allows(&alice));
        assert!(!a.allows(&bob));
        assert!(a.allows(&carol));
        // (u:carol | g:ops) & !u:bob
        let b = ace("(u:carol|g:ops)&!u:bob");
        assert!(b.allows(&alice));
        assert!(!b.allows(&bob));
        assert!(b.allows(&carol));
        assert!(!ace("!p").allows(&alice));
        assert!(ace("!!p").allows(&alice));
        assert!(ace("p & !(u:bob | u:carol)").allows(&alice));
        assert!(!ace("p & !(u:bob | u:carol)").allows(&bob));
    }

    #[test]
    fn canonical_display() {
        assert_eq!(ace("  u:a|g:b &!u:c ").to_string(), "u:a | g:b & !u:c");
        assert_eq!(ace("(u:a|u:b)&g:c").to_string(), "(u:a | u:b) & g:c");
        assert_eq!(ace("((u:a))").to_string(), "u:a");
        assert_eq!(ace("!(u:a&u:b)").to_string(), "!(u:a & u:b)");
        assert_eq!(ace("(u:a|u:b)|u:c").to_string(), "(u:a | u:b) | u:c");
        assert_eq!(ace("u:a|(u:b|u:c)").to_string(), "u:a | (u:b | u:c)");
        for s in ["u:a | g:b & !u:c", "(u:a | u:b) | u:c", "!!p"] {
            assert_eq!(ace(&ace(s).to_string()), ace(s));
        }
    }

    #[test]
    fn serde_as_text() {
        let a = ace("g:ops & !u:bob");
        let bytes = postcard::to_allocvec(&a).unwrap();
        let text: String = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(text, "g:ops & !u:bob");
        let back: Ace = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        let bad = postcard::to_allocvec("u:").unwrap();
        assert!(postcard::from_bytes::<Ace>(&bad).is_err());
    }

    #[test]
    fn errors_are_precise() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "u:a & u:b)",
                9,
                "unexpected ')' at position 9: there is no '(' to close",
            ),
            (
                "(u:a) )",
                6,
                "unexpected ')' at position 6: there is no '(' to close",
            ),
            (
                "u:",
                2,
                "expected a name after 'u:' at position 2: names use letters, digits and . _ @ -",
            ),
            (
                "p | g: x",
                6,
                "expected a name after 'g:' at position 6: names use letters, digits and . _ @ -",
            ),
            (
                "x",
                0,
                "unknown term 'x' at position 0: use u:NAME, g:NAME or p",
            ),
            (
                "user:bob",
                0,
                "unknown term 'user' at position 0: use u:NAME, g:NAME or p",
            ),
            (
                "u:a | u",
                6,
                "unknown term 'u' at position 6: use u:NAME, g:NAME or p",
            ),
            (
                "p:x",
                0,
                "unknown term 'p' at position 0: use u:NAME, g:NAME or p",
            ),
            (
                "u:a & (u:b | u:c",
                6,
                "unclosed '(' opened at position 6: add the missing ')'",
            ),
            (
                "u:a &",
                5,
                "unexpected end of the expression at position 5: expected u:NAME, g:NAME, p, '!' or '('",
            ),
            (
                "()",
                1,
                "unexpected ')' at position 1: expected u:NAME, g:NAME, p, '!' or '('",
            ),
            (
                "| u:a",
                0,
                "unexpected '|' at position 0: expected u:NAME, g:NAME, p, '!' or '('",
            ),
            (
                "u:a u:b",
                4,
                "unexpected 'u:b' at position 4: expected '&', '|' or the end of the expression",
            ),
            (
                "(u:a g:b)",
                5,
                "unexpected 'g:b' at position 5: expected '&', '|' or ')'",
            ),
            (
                "u:a # u:b",
                4,
                "unexpected character '#' at position 4: an ACE is made of u:NAME, g:NAME, p, \
                 '!', '&', '|' and parentheses",
            ),
            (
                "u:a:b",
                3,
                "unexpected character ':' at position 3: an ACE is made of u:NAME, g:NAME, p, \
                 '!', '&', '|' and parentheses",
            ),
            (
                "é | x",
                0,
                "unexpected character 'é' at position 0: an ACE is made of u:NAME, g:NAME, p, \
                 '!', '&', '|' and parentheses",
            ),
        ];
        for (text, pos, message) in cases {
            let e = err(text);
            assert_eq!(e.message, *message, "{text:?}");
            assert_eq!(e.pos, *pos, "{text:?}");
            assert_eq!(e.to_string(), *message);
        }
        // Positions count characters, not bytes.
        assert_eq!(err("u:é").pos, 2);
        assert_eq!(err("ü").pos, 0);
    }

    #[test]
    fn limits() {
        let deep_ok = format!(
            "{}p{}",
            "(".repeat(ACE_DEPTH_MAX),
            ")".repeat(ACE_DEPTH_MAX)
        );
        assert!(Ace::parse(&deep_ok).is_ok());
        let too_deep = format!("{}p", "!".repeat(ACE_DEPTH_MAX + 1));
        let e = err(&too_deep);
        assert_eq!(e.pos, ACE_DEPTH_MAX);
        assert!(e.message.contains("nests deeper than 32 levels"), "{e}");
        let very_deep = "(".repeat(100_000);
        assert!(err(&very_deep).message.contains("-byte limit"));
        // A long flat list is fine: it is one Or, not a deep tree.
        let many = (0..1000)
            .map(|i| format!("u:user{i}"))
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(ace(&many).allows(&who("user999", &[])));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![
            // A small pool so that evaluation hits matches.
            prop::sample::select(vec!["alice", "bob", "ops", "staff"]).prop_map(String::from),
            "[A-Za-z0-9._@-]{1,8}",
        ]
    }

    fn arb_expr() -> impl Strategy<Value = AceExpr> {
        let leaf = prop_oneof![
            arb_name().prop_map(AceExpr::User),
            arb_name().prop_map(AceExpr::Group),
            Just(AceExpr::Public),
        ];
        leaf.prop_recursive(5, 48, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| AceExpr::Not(Box::new(e))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(AceExpr::And),
                prop::collection::vec(inner, 2..4).prop_map(AceExpr::Or),
            ]
        })
    }

    /// Reference semantics, written independently of `AceExpr::allows`.
    fn reference(e: &AceExpr, name: &str, groups: &[String]) -> bool {
        match e {
            AceExpr::User(n) => n == name,
            AceExpr::Group(g) => groups.contains(g),
            AceExpr::Public => true,
            AceExpr::Not(x) => !reference(x, name, groups),
            AceExpr::And(xs) => xs
                .iter()
                .fold(true, |acc, x| acc & reference(x, name, groups)),
            AceExpr::Or(xs) => xs
                .iter()
                .fold(false, |acc, x| acc | reference(x, name, groups)),
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(e in arb_expr()) {
            let text = e.to_string();
            let parsed = Ace::parse(&text).map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
            prop_assert_eq!(parsed.expr(), Some(&e), "{}", text);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn evaluation_matches_the_reference(
            e in arb_expr(),
            name in arb_name(),
            groups in prop::collection::vec(arb_name(), 0..3),
        ) {
            let p = Principal {
                name: name.clone(),
                kind: PrincipalKind::User,
                uid: 1,
                gids: vec![],
                groups: groups.clone(),
                scope: None,
            };
            let a = Ace::parse(&e.to_string()).unwrap();
            prop_assert_eq!(a.allows(&p), reference(&e, &name, &groups));
        }

        #[test]
        fn parse_never_panics(text in "[ug:p!&|() a-z.é#]{0,40}") {
            if let Ok(a) = Ace::parse(&text) {
                prop_assert_eq!(Ace::parse(&a.to_string()), Ok(a));
            }
        }
    }
}
