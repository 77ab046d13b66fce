//! Function volatility table: which functions may run on a replica.
//!
//! Data flow: a control-plane task loads the table from the primary's `pg_proc` with
//! [`FunctionTable::load`] and swaps it in with [`FunctionTable::replace`]; the classifier's tree
//! walk ([`super::analyze`]) asks [`FunctionTable::volatility`] for every function a statement
//! calls. A VOLATILE function (or one the table does not know) makes a statement a write,
//! because it may change data or read state that only the primary has (`nextval`, ...).
//!
//! The table also records operators, by the volatility of their implementing function, so a
//! user-defined operator backed by a volatile function also routes to the primary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use thiserror::Error;

/// Errors of the classifier module (only loading the table can fail; classifying cannot).
#[derive(Debug, Error)]
pub enum ClassifyError {
    /// The catalog query on the primary failed.
    #[error("loading function volatility from pg_proc: {0}")]
    Load(#[from] tokio_postgres::Error),
}

/// `pg_proc.provolatile`, ordered from least to most volatile so `max` picks the riskiest
/// overload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Volatility {
    /// Same result for the same arguments forever (`lower`, `abs`).
    Immutable,
    /// Same result within one statement, no side effects (`now`, `current_setting`).
    Stable,
    /// May have side effects or differ per call (`random`, `nextval`).
    Volatile,
}

impl Volatility {
    /// Parses a `provolatile` code; anything unexpected counts as volatile (the safe side).
    pub fn from_code(code: &str) -> Volatility {
        match code {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
}

/// One snapshot of the catalog; immutable once built and shared by `Arc`.
#[derive(Clone, Debug, Default)]
struct Catalog {
    /// schema → function name → most volatile overload.
    by_schema: HashMap<String, HashMap<String, Volatility>>,
    /// function name → most volatile overload over all schemas (for unqualified calls, whose
    /// schema depends on the session's search_path).
    by_name: HashMap<String, Volatility>,
    /// operator name → most volatile implementing function over all overloads.
    operators: HashMap<String, Volatility>,
}

impl Catalog {
    fn insert_function(&mut self, schema: &str, name: &str, volatility: Volatility) {
        let slot = self.by_schema.entry(schema.to_owned()).or_default().entry(name.to_owned()).or_insert(volatility);
        *slot = (*slot).max(volatility);
        let slot = self.by_name.entry(name.to_owned()).or_insert(volatility);
        *slot = (*slot).max(volatility);
    }

    fn insert_operator(&mut self, name: &str, volatility: Volatility) {
        let slot = self.operators.entry(name.to_owned()).or_insert(volatility);
        *slot = (*slot).max(volatility);
    }
}

/// Function name → volatility, shared by all classifiers and refreshable in place.
#[derive(Debug, Default)]
pub struct FunctionTable {
    catalog: RwLock<Arc<Catalog>>,
    /// Bumped by every [`FunctionTable::replace`]; cached routes from older generations miss.
    generation: AtomicU64,
}

/// The one catalog query: functions per (schema, name) and operators per name, each with the
/// most volatile `provolatile` code ('i' < 's' < 'v' also sorts as text).
const LOAD_QUERY: &str = "\
SELECT 'f'::text, n.nspname::text, p.proname::text, max(p.provolatile::text) \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
GROUP BY n.nspname, p.proname \
UNION ALL \
SELECT 'o'::text, ''::text, o.oprname::text, max(p.provolatile::text) \
FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode \
GROUP BY o.oprname";

impl FunctionTable {
    /// A table that knows no function: every function call classifies as a write.
    pub fn empty() -> FunctionTable {
        FunctionTable::default()
    }

    /// Builds a table from `(schema, name, volatility)` triples (overloads keep the most
    /// volatile); for tests and for callers that have the catalog from elsewhere.
    pub fn from_functions<I, S, N>(functions: I) -> FunctionTable
    where
        I: IntoIterator<Item = (S, N, Volatility)>,
        S: AsRef<str>,
        N: AsRef<str>,
    {
        let mut catalog = Catalog::default();
        for (schema, name, volatility) in functions {
            catalog.insert_function(schema.as_ref(), name.as_ref(), volatility);
        }
        FunctionTable { catalog: RwLock::new(Arc::new(catalog)), generation: AtomicU64::new(0) }
    }

    /// Adds an operator to a table being built (before it is shared).
    pub fn insert_operator(&mut self, name: &str, volatility: Volatility) {
        let catalog = self.catalog.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::make_mut(catalog).insert_operator(name, volatility);
    }

    /// Loads every function's volatility from pg_proc (one query; overloaded names take the
    /// most volatile) and every operator's from its implementing function.
    pub async fn load(client: &tokio_postgres::Client) -> Result<FunctionTable, ClassifyError> {
        let rows = client.query(LOAD_QUERY, &[]).await?;
        let mut catalog = Catalog::default();
        for row in rows {
            let kind: String = row.try_get(0)?;
            let schema: String = row.try_get(1)?;
            let name: String = row.try_get(2)?;
            let code: Option<String> = row.try_get(3)?;
            let volatility = Volatility::from_code(code.as_deref().unwrap_or("v"));
            if kind == "o" {
                catalog.insert_operator(&name, volatility);
            } else {
                catalog.insert_function(&schema, &name, volatility);
            }
        }
        tracing::debug!(
            functions = catalog.by_name.len(),
            operators = catalog.operators.len(),
            "loaded function volatility table"
        );
        Ok(FunctionTable { catalog: RwLock::new(Arc::new(catalog)), generation: AtomicU64::new(0) })
    }

    fn snapshot(&self) -> Arc<Catalog> {
        // A poisoned lock only means a writer panicked between two whole-Arc stores.
        Arc::clone(&self.catalog.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the contents (called by a refresh task) and invalidates cached routes.
    pub fn replace(&self, fresh: FunctionTable) {
        let fresh = fresh.catalog.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Volatility of `schema.name`, or of the most volatile `name` in any schema when the call
    /// is unqualified. `None` when the table does not know the function.
    pub fn volatility(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        self.snapshot().function(schema, name)
    }

    /// Volatility of the most volatile operator called `name`, if known.
    pub fn operator_volatility(&self, name: &str) -> Option<Volatility> {
        self.snapshot().operators.get(name).copied()
    }

    /// Counter that changes whenever the contents are replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of distinct function names known.
    pub fn len(&self) -> usize {
        self.snapshot().by_name.len()
    }

    /// Whether no function is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A consistent view for classifying one statement without re-locking per function.
    pub(super) fn view(&self) -> FunctionView {
        FunctionView { catalog: self.snapshot() }
    }
}

/// A snapshot of the table taken once per parse.
pub(super) struct FunctionView {
    catalog: Arc<Catalog>,
}

impl FunctionView {
    pub(super) fn function(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        self.catalog.function(schema, name)
    }

    pub(super) fn operator(&self, name: &str) -> Option<Volatility> {
        self.catalog.operators.get(name).copied()
    }
}

impl Catalog {
    fn function(&self, schema: Option<&str>, name: &str) -> Option<Volatility> {
        match schema {
            Some(schema) => self.by_schema.get(schema)?.get(name).copied(),
            None => self.by_name.get(name).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overloads_take_the_most_volatile_and_replace_bumps_generation() {
        let table = FunctionTable::from_functions([
            ("public", "f", Volatility::Immutable),
            ("public", "f", Volatility::Volatile),
            ("other", "g", Volatility::Stable),
            ("public", "g", Volatility::Immutable),
        ]);
        assert_eq!(table.volatility(None, "f"), Some(Volatility::Volatile));
        assert_eq!(table.volatility(Some("public"), "g"), Some(Volatility::Immutable));
        assert_eq!(table.volatility(None, "g"), Some(Volatility::Stable));
        assert_eq!(table.volatility(Some("other"), "f"), None);
        assert_eq!(table.volatility(None, "h"), None);
        let generation = table.generation();
        table.replace(FunctionTable::from_functions([("public", "h", Volatility::Stable)]));
        assert_ne!(table.generation(), generation);
        assert_eq!(table.volatility(None, "h"), Some(Volatility::Stable));
        assert_eq!(table.volatility(None, "f"), None);
        assert_eq!(Volatility::from_code("x"), Volatility::Volatile);
    }
}
