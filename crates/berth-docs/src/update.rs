//! (being written: a stub of the API until the update operators land)
use bson::Document;

use crate::DocError;

#[derive(Debug, Clone)]
pub enum Update {
    Replacement(Document),
}

pub struct ApplyContext {
    pub now: bson::DateTime,
    pub positional: Option<usize>,
    pub inserting: bool,
}

impl Update {
    pub fn parse(_spec: &Document, _array_filters: &[Document]) -> Result<Update, DocError> {
        Err(DocError::bad_value("updates are being written"))
    }
    pub fn apply(&self, _doc: &mut Document, _ctx: &ApplyContext) -> Result<bool, DocError> {
        Err(DocError::bad_value("updates are being written"))
    }
}

pub fn upsert_seed(_filter: &Document) -> Document {
    Document::new()
}
