//! rusqlite's rows as [`chancery_store_sql::rows::Row`], for the readers
//! both backends share.

use chancery_store_sql::rows::Row;

/// A row inside one of rusqlite's row callbacks.
pub(crate) struct SqliteRow<'r, 's>(pub(crate) &'r rusqlite::Row<'s>);

impl Row for SqliteRow<'_, '_> {
    type Error = rusqlite::Error;

    fn text(&self, column: usize) -> rusqlite::Result<String> {
        self.0.get(column)
    }

    fn opt_text(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.0.get(column)
    }

    fn int(&self, column: usize) -> rusqlite::Result<i64> {
        self.0.get(column)
    }

    fn opt_int(&self, column: usize) -> rusqlite::Result<Option<i64>> {
        self.0.get(column)
    }

    fn boolean(&self, column: usize) -> rusqlite::Result<bool> {
        self.0.get(column)
    }

    fn float(&self, column: usize) -> rusqlite::Result<f64> {
        self.0.get(column)
    }
}
