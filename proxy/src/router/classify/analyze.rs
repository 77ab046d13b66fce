//! Parse-based classification: the slow path behind the route cache.
//!
//! Data flow: [`super::Classifier::classify`] calls [`analyze`] on a cache miss. The statement
//! string is parsed by pg_query (PostgreSQL's own grammar); each top-level statement is sorted
//! by kind here (transaction control, SET family, cursors, EXPLAIN, COPY, ...) and its tree is
//! scanned by [`super::walk`] for the rules that apply anywhere. Anything the parser rejects
//! is a write with no effects.

use pg_query::protobuf::{self, DiscardMode, TransactionStmtKind, VariableSetKind};
use pg_query::NodeEnum;

use super::functions::FunctionView;
use super::walk::{self, Findings, Scope};
use super::{PinReason, Route, SessionEffect};

/// `CURSOR_OPT_HOLD` from PostgreSQL's parsenodes.h: DECLARE ... WITH HOLD.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// The parser's verdict on a statement string.
#[derive(Debug)]
pub(super) struct Analysis {
    /// Read only if every statement may run on a replica.
    pub route: Route,
    /// Session effects of all statements, in order.
    pub effects: Vec<SessionEffect>,
    /// Whether the verdict may be cached under the statement's fingerprint.
    pub cacheable: bool,
    /// Functions the volatility table does not know.
    pub unknown_functions: Vec<String>,
    /// A statement created or altered a function, so the volatility table is stale.
    pub functions_changed: bool,
}

impl Analysis {
    /// The verdict for text the parser rejects (or that makes it fail in any way).
    fn unparsable() -> Analysis {
        Analysis {
            route: Route::Write,
            effects: Vec::new(),
            // The same fingerprint can belong to a valid statement with effects (a SET whose
            // value is two adjacent string literals on one line vs. on two lines).
            cacheable: false,
            unknown_functions: Vec::new(),
            functions_changed: false,
        }
    }
}

/// Classifies `sql` with the parser.
pub(super) fn analyze(sql: &str, functions: &FunctionView) -> Analysis {
    // pg_query reports errors as values; the unwind guard is insurance against a panic in its
    // Rust-side tree helpers, which must never take a client task down.
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0));
    let parsed = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(error)) => {
            tracing::debug!(%error, "statement not parsable; routing to primary");
            return Analysis::unparsable();
        }
        Err(_) => {
            tracing::warn!("pg_query panicked; routing statement to primary");
            return Analysis::unparsable();
        }
    };
    let mut analysis = Analysis {
        route: Route::Read,
        effects: Vec::new(),
        cacheable: true,
        unknown_functions: Vec::new(),
        functions_changed: false,
    };
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            analysis.route = Route::Write;
            analysis.cacheable = false;
            continue;
        };
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        let mut statement = Statement {
            text,
            functions,
            route: Route::Read,
            findings: Findings::default(),
            effects: Vec::new(),
            literal_dependent: false,
            functions_changed: false,
        };
        statement.classify(node);
        if statement.route == Route::Write || statement.findings.write {
            analysis.route = Route::Write;
        }
        analysis.effects.append(&mut statement.effects);
        analysis.effects.extend(statement.findings.pins.iter().map(|&reason| SessionEffect::Pin(reason)));
        for name in statement.findings.unknown_functions {
            if !analysis.unknown_functions.contains(&name) {
                analysis.unknown_functions.push(name);
            }
        }
        analysis.functions_changed |= statement.functions_changed;
        if statement.literal_dependent {
            analysis.cacheable = false;
        }
    }
    if !analysis.effects.is_empty() {
        // Session state lives on the primary connection (and is replayed elsewhere), so a
        // statement with effects never starts on a replica: that also keeps a pin from
        // binding a client to a replica.
        analysis.route = Route::Write;
        analysis.cacheable = false;
    }
    if !analysis.unknown_functions.is_empty() {
        analysis.cacheable = false;
    }
    analysis
}

/// The exact text of one statement: PostgreSQL reports byte offsets, a length of 0 meaning
/// "to the end". Falls back to the whole string if the offsets do not fit.
fn statement_text(sql: &str, location: i32, length: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let end = match usize::try_from(length) {
        Ok(0) | Err(_) => sql.len(),
        Ok(length) => start.saturating_add(length).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim()
}

/// Classification state of one top-level statement.
struct Statement<'a> {
    text: &'a str,
    functions: &'a FunctionView,
    route: Route,
    findings: Findings,
    effects: Vec<SessionEffect>,
    /// The decision read a literal value (which the fingerprint does not see).
    literal_dependent: bool,
    functions_changed: bool,
}

impl Statement<'_> {
    fn scan<T: serde::Serialize + ?Sized>(&mut self, tree: &T, scope: Scope) {
        match serde_json::to_value(tree) {
            Ok(value) => walk::scan(&value, scope, self.functions, &mut self.findings),
            Err(error) => {
                tracing::warn!(%error, "cannot inspect parse tree; routing to primary");
                self.route = Route::Write;
                self.literal_dependent = true;
            }
        }
    }

    fn classify(&mut self, node: &NodeEnum) {
        match node {
            NodeEnum::SelectStmt(_) => self.scan(node, Scope::Executes),
            NodeEnum::VariableShowStmt(_) | NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) => {}
            NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_)
            | NodeEnum::CallStmt(_)
            | NodeEnum::CreateTableAsStmt(_) => {
                self.route = Route::Write;
                self.scan(node, Scope::Executes);
            }
            NodeEnum::ExecuteStmt(_) => {
                self.route = Route::Write;
                self.effects.push(SessionEffect::ExecutePrepared);
                self.scan(node, Scope::Executes);
            }
            NodeEnum::ExplainStmt(explain) => self.explain(explain),
            NodeEnum::CopyStmt(copy) => {
                // COPY TO a server file or program acts on the server's machine: primary.
                if copy.is_from || copy.is_program || !copy.filename.is_empty() {
                    self.route = Route::Write;
                }
                self.scan(node, Scope::Executes);
            }
            NodeEnum::TransactionStmt(transaction) => self.transaction(transaction),
            NodeEnum::VariableSetStmt(set) => {
                self.route = Route::Write;
                self.set(set);
            }
            NodeEnum::DiscardStmt(discard) => {
                self.route = Route::Write;
                let effect = match DiscardMode::try_from(discard.target) {
                    Ok(DiscardMode::DiscardAll) => Some(SessionEffect::DiscardAll),
                    Ok(DiscardMode::DiscardPlans) => Some(SessionEffect::DiscardPlans),
                    Ok(DiscardMode::DiscardSequences) => Some(SessionEffect::DiscardSequences),
                    Ok(DiscardMode::DiscardTemp) => Some(SessionEffect::DiscardTemp),
                    _ => None,
                };
                self.effects.extend(effect);
            }
            NodeEnum::DeallocateStmt(deallocate) => {
                self.route = Route::Write;
                let name = (!deallocate.isall && !deallocate.name.is_empty()).then(|| deallocate.name.clone());
                self.effects.push(SessionEffect::Deallocate { name });
            }
            NodeEnum::DropdbStmt(drop) => self.exclusive_database(&drop.dbname),
            NodeEnum::CreatedbStmt(create) => {
                let template = create.options.iter().find_map(|option| match option.node.as_ref() {
                    Some(NodeEnum::DefElem(def)) if def.defname == "template" => Some(def_text(def)),
                    _ => None,
                });
                match template {
                    // `TEMPLATE DEFAULT` and no TEMPLATE both mean template1.
                    Some(Some(name)) => self.exclusive_database(&name),
                    Some(None) | None => self.exclusive_database("template1"),
                }
            }
            NodeEnum::RenameStmt(rename) if rename.rename_type == protobuf::ObjectType::ObjectDatabase as i32 => {
                self.exclusive_database(&rename.subname)
            }
            NodeEnum::AlterDatabaseStmt(alter) => {
                self.route = Route::Write;
                let moves = alter
                    .options
                    .iter()
                    .any(|o| matches!(o.node.as_ref(), Some(NodeEnum::DefElem(d)) if d.defname == "tablespace"));
                if moves {
                    self.exclusive_database(&alter.dbname);
                }
            }
            NodeEnum::ListenStmt(_) => self.pin(PinReason::Listen),
            NodeEnum::PrepareStmt(_) => self.pin(PinReason::SqlPrepare),
            NodeEnum::LoadStmt(_) => self.pin(PinReason::Load),
            // A DO block may SET ROLE / SESSION AUTHORIZATION or set_config(..., false) where
            // the tracker cannot see it: the session keeps its connection, reset at the end.
            NodeEnum::DoStmt(_) => self.pin(PinReason::Other),
            NodeEnum::DeclareCursorStmt(declare) => {
                if declare.options & CURSOR_OPT_HOLD != 0 {
                    // A holdable cursor outlives its transaction on this server.
                    self.pin(PinReason::HoldCursor);
                }
                self.scan(node, Scope::Executes);
            }
            NodeEnum::CreateFunctionStmt(create) => {
                self.route = Route::Write;
                self.functions_changed = true;
                let mut names = create.funcname.iter().filter_map(|n| match n.node.as_ref() {
                    Some(NodeEnum::String(name)) => Some(name.sval.as_str()),
                    _ => None,
                });
                let schema = names.next();
                if names.next().is_some() && schema.is_some_and(|s| s.starts_with("pg_temp")) {
                    self.effects.push(SessionEffect::Pin(PinReason::TempObject));
                }
            }
            NodeEnum::AlterFunctionStmt(_) => {
                self.route = Route::Write;
                self.functions_changed = true;
            }
            // DDL, LOCK, VACUUM, DO, NOTIFY, UNLISTEN, CHECKPOINT, ... and whatever a newer
            // grammar adds: the primary.
            _ => {
                self.route = Route::Write;
                self.scan(node, Scope::TempObjectsOnly);
            }
        }
    }

    fn exclusive_database(&mut self, name: &str) {
        self.route = Route::Write;
        self.effects.push(SessionEffect::ExclusiveDatabase { name: name.to_owned() });
    }

    fn pin(&mut self, reason: PinReason) {
        self.route = Route::Write;
        self.effects.push(SessionEffect::Pin(reason));
    }

    /// EXPLAIN only plans; EXPLAIN ANALYZE runs the statement, which then decides.
    fn explain(&mut self, explain: &protobuf::ExplainStmt) {
        if let Some(inner @ NodeEnum::ExecuteStmt(_)) = explain.query.as_ref().and_then(|q| q.node.as_ref()) {
            // It names a prepared statement, which may be the client's (see ExecutePrepared).
            return self.classify(inner);
        }
        let mut analyze = false;
        for option in &explain.options {
            let Some(NodeEnum::DefElem(def)) = option.node.as_ref() else {
                continue;
            };
            if def.defname != "analyze" {
                continue;
            }
            analyze = match def.arg.as_ref().and_then(|arg| arg.node.as_ref()) {
                None => true,
                Some(NodeEnum::Boolean(value)) => value.boolval,
                Some(other) => {
                    // `ANALYZE 'off'` / `ANALYZE 0`: a literal the fingerprint cannot see.
                    self.literal_dependent = true;
                    !is_false_word(other)
                }
            };
        }
        if !analyze {
            return;
        }
        match explain.query.as_ref().and_then(|q| q.node.as_ref()) {
            Some(inner) => self.classify(inner),
            None => self.route = Route::Write,
        }
    }

    /// BEGIN / START TRANSACTION READ ONLY may run on a replica; all other transaction
    /// control goes to the primary.
    fn transaction(&mut self, transaction: &protobuf::TransactionStmt) {
        self.route = Route::Write;
        let starts = matches!(
            TransactionStmtKind::try_from(transaction.kind),
            Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart)
        );
        if !starts {
            return;
        }
        let mut read_only = None;
        for option in &transaction.options {
            let Some(NodeEnum::DefElem(def)) = option.node.as_ref() else {
                continue;
            };
            if def.defname == "transaction_read_only" {
                read_only = Some(def_flag(def));
            }
        }
        if read_only == Some(true) {
            self.route = Route::Read;
        }
    }

    /// The SET family: session-level settings become replayable effects.
    fn set(&mut self, set: &protobuf::VariableSetStmt) {
        let name = set.name.to_ascii_lowercase();
        let kind = VariableSetKind::try_from(set.kind).unwrap_or(VariableSetKind::Undefined);
        match kind {
            VariableSetKind::VarResetAll => self.effects.push(SessionEffect::ResetAll),
            VariableSetKind::VarReset => self.effects.push(SessionEffect::Reset { name }),
            _ if set.is_local => {}
            VariableSetKind::VarSetDefault => self.effects.push(SessionEffect::Reset { name }),
            VariableSetKind::VarSetValue | VariableSetKind::VarSetCurrent => {
                self.effects.push(SessionEffect::Set { name, statement: self.text.to_owned() })
            }
            VariableSetKind::VarSetMulti if name == "session characteristics" => {
                // SET SESSION CHARACTERISTICS AS TRANSACTION ...: sets the default_* GUCs.
                for arg in &set.args {
                    if let Some(NodeEnum::DefElem(def)) = arg.node.as_ref() {
                        self.effects.push(SessionEffect::Set {
                            name: format!("default_{}", def.defname.to_ascii_lowercase()),
                            statement: self.text.to_owned(),
                        });
                    }
                }
            }
            // SET TRANSACTION ... / SET TRANSACTION SNAPSHOT: this transaction only.
            VariableSetKind::VarSetMulti => {}
            VariableSetKind::Undefined => {}
        }
    }
}

/// A DefElem's value written as a name or a string (`TEMPLATE tpl`, `TEMPLATE = 'tpl'`: the
/// grammar makes both a String); `None` for DEFAULT or another kind of value.
fn def_text(def: &protobuf::DefElem) -> Option<String> {
    match def.arg.as_ref().and_then(|arg| arg.node.as_ref()) {
        Some(NodeEnum::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

/// Value of a boolean-ish DefElem as the grammar builds it (`makeIntConst(TRUE)`, a Boolean,
/// or none meaning true).
fn def_flag(def: &protobuf::DefElem) -> bool {
    match def.arg.as_ref().and_then(|arg| arg.node.as_ref()) {
        None => true,
        Some(NodeEnum::Boolean(value)) => value.boolval,
        Some(NodeEnum::Integer(value)) => value.ival != 0,
        Some(NodeEnum::AConst(constant)) => match &constant.val {
            Some(protobuf::a_const::Val::Ival(value)) => value.ival != 0,
            Some(protobuf::a_const::Val::Boolval(value)) => value.boolval,
            _ => true,
        },
        Some(_) => true,
    }
}

/// Whether an option argument spells false (`off`, `false`, `no`, `0`).
fn is_false_word(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::String(value) => {
            matches!(value.sval.to_ascii_lowercase().as_str(), "off" | "false" | "no" | "0")
        }
        NodeEnum::Integer(value) => value.ival == 0,
        _ => false,
    }
}

/// Exposes the serde form of a statement for debugging classifier decisions in tests.
#[cfg(test)]
pub(super) fn tree_of(sql: &str) -> Option<serde_json::Value> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    serde_json::to_value(&parsed.protobuf).ok()
}
