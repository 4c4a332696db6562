//! What a Postgres error says, for people and for the code that decides whether trying again
//! can help.

use super::StoreError;

/// The server's own message and SQLSTATE, where tokio-postgres's `Display` says only "db error".
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => error.to_string(),
    }
}

impl StoreError {
    /// Postgres refused the data itself: a value it cannot store (class 22, data exception: a
    /// NUL in text, a number out of range) or that exceeds one of its limits (class 54: an index
    /// row too large, a document too deep for its stack). The same write fails the same way
    /// every time, so retrying or handing the message back only loops.
    pub fn is_refused_data(&self) -> bool {
        match self {
            StoreError::Db(e) => e
                .as_db_error()
                .map(|db| db.code().code())
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            _ => false,
        }
    }
}
