//! Aggregation expressions (being written): the API other modules build on.

use bson::{Bson, Document};

use crate::DocError;

/// A parsed aggregation expression (`"$a.b"`, `{$add: ["$x", 1]}`, literals).
#[derive(Debug, Clone)]
pub struct Expr {
    _private: (),
}

impl Expr {
    /// Parses an expression.
    pub fn parse(_v: &Bson) -> Result<Expr, DocError> {
        Err(DocError::bad_value("expressions are being written"))
    }

    /// Evaluates against a document (`$$ROOT` and `$$CURRENT` are `root`).
    pub fn eval(&self, _root: &Document) -> Result<Bson, DocError> {
        Err(DocError::bad_value("expressions are being written"))
    }
}

/// MongoDB's truthiness: false, null, undefined, missing and numeric zero are false.
pub fn truthy(v: &Bson) -> bool {
    !matches!(v, Bson::Boolean(false) | Bson::Null | Bson::Undefined)
        && !matches!(crate::order::number(v), Some(crate::order::Num::Int(0)))
        && !matches!(crate::order::number(v), Some(crate::order::Num::Float(f)) if f == 0.0)
}
