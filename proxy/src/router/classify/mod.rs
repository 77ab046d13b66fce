//! STUB — replaced by the `classify` branch. Same public API.
use std::sync::Arc;

pub struct Classifier;
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub route: Route,
    pub effects: Vec<SessionEffect>,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Read,
    Write,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEffect {
    Set { name: String, statement: String },
    Reset { name: String },
    ResetAll,
    DiscardAll,
    Deallocate { name: Option<String> },
    Pin(PinReason),
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinReason {
    Listen,
    TempObject,
    SqlPrepare,
    SessionAdvisoryLock,
    HoldCursor,
    Load,
    Other,
}
pub struct FunctionTable;
#[derive(Debug, thiserror::Error)]
#[error("classify error")]
pub struct ClassifyError;
impl FunctionTable {
    pub fn empty() -> FunctionTable {
        FunctionTable
    }
    pub async fn load(_client: &tokio_postgres::Client) -> Result<FunctionTable, ClassifyError> {
        Ok(FunctionTable)
    }
    pub fn replace(&self, _fresh: FunctionTable) {}
}
impl Classifier {
    pub fn new(_functions: Arc<FunctionTable>, _cache_capacity: usize) -> Classifier {
        Classifier
    }
    pub fn classify(&self, sql: &str) -> Classification {
        let s = sql.trim_start().to_ascii_lowercase();
        let route = if (s.starts_with("select") && !s.contains("for update") && !s.contains("nextval"))
            || s.starts_with("show")
            || s.starts_with("begin read only")
        {
            Route::Read
        } else {
            Route::Write
        };
        let mut effects = Vec::new();
        if s.starts_with("listen") {
            effects.push(SessionEffect::Pin(PinReason::Listen));
        }
        if s.starts_with("set ") && !s.starts_with("set local") && !s.starts_with("set transaction") {
            let name = s[4..].split(|c: char| c == ' ' || c == '=').next().unwrap_or("").to_owned();
            effects.push(SessionEffect::Set { name, statement: sql.trim().trim_end_matches(';').to_owned() });
        }
        Classification { route, effects }
    }
    pub fn take_refresh_request(&self) -> bool {
        false
    }
}
