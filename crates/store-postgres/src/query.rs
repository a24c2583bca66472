//! Running prepared statements and reading their rows, with tokio-postgres'
//! errors turned into `StoreError`s.

use chancery_store::StoreResult;
use chancery_store_sql::rows::Row as SqlRow;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::backend;

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx).map_err(backend)
}

pub(crate) async fn execute(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, tokio_postgres::Error> {
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, params).await
}

pub(crate) async fn query(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&stmt, params).await.map_err(backend)
}

pub(crate) async fn query_opt(c: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&stmt, params).await.map_err(backend)
}

/// A row for the readers both backends share (`chancery_store_sql::rows`).
pub(crate) struct PgRow<'r>(pub(crate) &'r Row);

impl SqlRow for PgRow<'_> {
    type Error = chancery_store::StoreError;

    fn text(&self, column: usize) -> StoreResult<String> {
        get(self.0, column)
    }

    fn opt_text(&self, column: usize) -> StoreResult<Option<String>> {
        get(self.0, column)
    }

    fn int(&self, column: usize) -> StoreResult<i64> {
        get(self.0, column)
    }

    fn opt_int(&self, column: usize) -> StoreResult<Option<i64>> {
        get(self.0, column)
    }

    fn boolean(&self, column: usize) -> StoreResult<bool> {
        get(self.0, column)
    }

    fn float(&self, column: usize) -> StoreResult<f64> {
        get(self.0, column)
    }
}
