//! Whole-tree scan of one parsed statement for the rules that apply "anywhere in the tree".
//!
//! Data flow: [`super::analyze`] hands each statement's parse tree here after deciding the
//! statement kind; the scan reports data-modifying sub-statements (CTEs), row locks, SELECT INTO,
//! function and operator calls and their volatility, and temporary objects.
//!
//! The tree is visited through its serde form (`serde_json::Value`), which pg_query's protobuf
//! types derive: that reaches every one of the ~270 node types without a hand-written visitor
//! per type (pg_query's own `nodes()` skips expression kinds such as CASE arms). Nodes wrapped
//! in `Node` appear as `{"TypeName": {...}}`; structs embedded directly (a `SelectStmt`'s set
//! operation arms, an `IntoClause`'s `RangeVar`) are recognised by their field names instead.
//! The cost is paid only on a cache miss.

use serde_json::{Map, Value};

use super::functions::{FunctionView, Volatility};
use super::PinReason;

/// Functions that are writes whatever the table says (the table may be empty or stale).
/// `pg_backend_pid` runs where the client's pid is its backend's (session pooling).
const ALWAYS_WRITE: &[&str] = &["nextval", "setval", "currval", "lastval", "set_config", "pg_backend_pid"];

/// Session-level advisory lock functions: the lock lives as long as the server session, so the
/// client must stay on that server (the `_xact_` variants end with the transaction).
const SESSION_ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// How much of the tree matters for a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// The statement executes its expressions: every rule applies.
    Executes,
    /// DDL and other statements that do not run their expressions now (a view's query, a
    /// column default): only temporary-object creation matters.
    TempObjectsOnly,
}

/// What the scan found.
#[derive(Debug, Default)]
pub(super) struct Findings {
    /// Something in the tree writes or must run on the primary.
    pub write: bool,
    /// Pins, in order of appearance, without duplicates.
    pub pins: Vec<PinReason>,
    /// Functions the table does not know (`schema.name` or `name`).
    pub unknown_functions: Vec<String>,
}

impl Findings {
    fn pin(&mut self, reason: PinReason) {
        if !self.pins.contains(&reason) {
            self.pins.push(reason);
        }
    }
}

/// Scans `tree` (one statement in serde form) under `scope`, adding to `findings`.
pub(super) fn scan(tree: &Value, scope: Scope, functions: &FunctionView, findings: &mut Findings) {
    // Iterative so that no input depth can exhaust the stack (prost already caps decode depth).
    let mut stack: Vec<&Value> = vec![tree];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                visit_object(map, scope, functions, findings);
                stack.extend(map.values());
            }
            _ => {}
        }
    }
}

fn visit_object(map: &Map<String, Value>, scope: Scope, functions: &FunctionView, findings: &mut Findings) {
    // A RangeVar, wrapped or embedded.
    if let Some(Value::String(persistence)) = map.get("relpersistence") {
        let schema = map.get("schemaname").and_then(Value::as_str).unwrap_or("");
        if persistence == "t" || is_temp_schema(schema) {
            findings.pin(PinReason::TempObject);
        }
    }
    // Objects named by a qualified name list rather than a RangeVar (CREATE TYPE ... AS
    // ENUM/RANGE, CREATE DOMAIN, CREATE AGGREGATE/OPERATOR/COLLATION/TYPE, CREATE CONVERSION)
    // made in pg_temp, and objects moved there with ALTER ... SET SCHEMA.
    for key in ["type_name", "domainname", "defnames", "conversion_name"] {
        let names = name_list(map.get(key));
        if names.len() >= 2 && is_temp_schema(names[names.len() - 2]) {
            findings.pin(PinReason::TempObject);
        }
    }
    if map.get("newschema").and_then(Value::as_str).is_some_and(is_temp_schema) {
        findings.pin(PinReason::TempObject);
    }
    if scope == Scope::TempObjectsOnly {
        return;
    }
    // A SelectStmt, wrapped or embedded as a set-operation arm.
    if non_empty_array(map.get("locking_clause")) {
        findings.write = true;
    }
    if map.get("into_clause").is_some_and(|into| !into.is_null()) {
        findings.write = true;
    }
    // A FuncCall, wrapped or embedded (CallStmt.funccall).
    if map.contains_key("funcname") && map.contains_key("agg_star") {
        func_call(map, functions, findings);
    }
    for (key, value) in map {
        match key.as_str() {
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => findings.write = true,
            "AExpr" => operator(value, functions, findings),
            _ => {}
        }
    }
}

fn is_temp_schema(schema: &str) -> bool {
    schema == "pg_temp" || schema.starts_with("pg_temp_")
}

fn non_empty_array(value: Option<&Value>) -> bool {
    value.and_then(Value::as_array).is_some_and(|items| !items.is_empty())
}

/// The `sval`s of a name list (`[{"node": {"String": {"sval": ..}}}, ..]`).
pub(super) fn name_list(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items.iter().filter_map(|item| item.pointer("/node/String/sval").and_then(Value::as_str)).collect()
        })
        .unwrap_or_default()
}

fn func_call(map: &Map<String, Value>, functions: &FunctionView, findings: &mut Findings) {
    let names = name_list(map.get("funcname"));
    let Some((&name, qualifiers)) = names.split_last() else {
        findings.write = true;
        return;
    };
    let schema = qualifiers.last().copied();
    if schema.is_some_and(is_temp_schema) {
        findings.pin(PinReason::TempObject);
    }
    if SESSION_ADVISORY_LOCKS.contains(&name) {
        findings.pin(PinReason::SessionAdvisoryLock);
    }
    if name == "set_config" && !third_arg_is_true(map) {
        // set_config(name, value, false) changes the session like SET, but its text is not a
        // SET we could replay: keep the client on this server.
        findings.pin(PinReason::Other);
    }
    if ALWAYS_WRITE.contains(&name) || name.starts_with("pg_advisory") || name.starts_with("pg_try_advisory") {
        findings.write = true;
    }
    match functions.function(schema, name) {
        Some(Volatility::Immutable | Volatility::Stable) => {}
        Some(Volatility::Volatile) => findings.write = true,
        None => {
            findings.write = true;
            let qualified = match schema {
                Some(schema) => format!("{schema}.{name}"),
                None => name.to_owned(),
            };
            if !findings.unknown_functions.contains(&qualified) {
                findings.unknown_functions.push(qualified);
            }
        }
    }
}

/// Whether `set_config`'s `is_local` argument is the keyword TRUE (a keyword survives the
/// fingerprint; a literal such as `'t'` would not, so only the keyword counts).
fn third_arg_is_true(map: &Map<String, Value>) -> bool {
    map.get("args")
        .and_then(Value::as_array)
        .and_then(|args| args.get(2))
        .and_then(|arg| arg.pointer("/node/AConst/val/Boolval/boolval"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// An operator backed by a volatile function is a write; unknown operators (and keyword
/// forms such as BETWEEN, whose name is no operator) are not.
fn operator(expr: &Value, functions: &FunctionView, findings: &mut Findings) {
    let names = name_list(expr.get("name"));
    if let Some(name) = names.last() {
        if functions.operator(name) == Some(Volatility::Volatile) {
            findings.write = true;
        }
    }
}
