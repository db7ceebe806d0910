//! Query filters (being written): the API other modules build on.

use bson::Document;

use crate::DocError;

/// A parsed query filter.
#[derive(Debug, Clone)]
pub struct Filter {
    _private: (),
}

/// What a match found, for the update operators' positional `$`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchDetails {
    /// The index of the array element that matched the filter's condition
    /// on an array field, when one did.
    pub array_index: Option<usize>,
}

impl Filter {
    /// Parses a filter document (`{a: 1, b: {$gt: 2}}`).
    pub fn parse(_filter: &Document) -> Result<Filter, DocError> {
        Err(DocError::bad_value("filters are being written"))
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Document) -> bool {
        self.match_details(doc).is_some()
    }

    /// `Some` when `doc` matches, with what the match found.
    pub fn match_details(&self, _doc: &Document) -> Option<MatchDetails> {
        None
    }
}
