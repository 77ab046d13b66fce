//! Transaction pooling never hands one client's session state to another: for each kind of
//! state the proxy resets or tracks (docs/ARCHITECTURE.md, "Session state under transaction
//! pooling"), client A changes it, then client B runs on the very same server backend
//! (`--pool-size 1`) and must see a fresh session, while A keeps what it set.

use tandem_tests::cluster::one;
use tandem_tests::{init_tracing, Cluster, ClusterOptions};

/// One kind of session state.
struct Case {
    /// What client A runs.
    change: &'static str,
    /// What A sees afterwards (`None`: not checked).
    a_sees: Option<(&'static str, &'static str)>,
    /// The query client B runs and what a fresh session answers.
    b_sees: (&'static str, &'static str),
    /// The change pins A to its connection: B gets the backend only after A left.
    pins: bool,
}

const WHO: &str = "SELECT session_user || ',' || current_user";

const CASES: &[Case] = &[
    Case {
        change: "SET search_path = nosuch",
        a_sees: Some(("SHOW search_path", "nosuch")),
        b_sees: ("SHOW search_path", "\"$user\", public"),
        pins: false,
    },
    Case {
        change: "SET application_name = 'client_a'",
        a_sees: Some(("SHOW application_name", "client_a")),
        b_sees: ("SHOW application_name", ""),
        pins: false,
    },
    Case { change: "SET ROLE r1", a_sees: Some((WHO, "postgres,r1")), b_sees: (WHO, "postgres,postgres"), pins: false },
    Case {
        change: "BEGIN; SET ROLE r1; COMMIT",
        a_sees: Some((WHO, "postgres,r1")),
        b_sees: (WHO, "postgres,postgres"),
        pins: false,
    },
    Case {
        change: "SET SESSION AUTHORIZATION r1",
        a_sees: Some((WHO, "r1,r1")),
        b_sees: (WHO, "postgres,postgres"),
        pins: false,
    },
    Case {
        change: "SET SESSION AUTHORIZATION r1; SET ROLE r2",
        a_sees: Some((WHO, "r1,r2")),
        b_sees: (WHO, "postgres,postgres"),
        pins: false,
    },
    // RESET ALL keeps the role in PostgreSQL, and so must the proxy's tracker.
    Case {
        change: "SET ROLE r1; RESET ALL",
        a_sees: Some((WHO, "postgres,r1")),
        b_sees: (WHO, "postgres,postgres"),
        pins: false,
    },
    Case {
        change: "SELECT set_config('role', 'r1', false)",
        a_sees: Some((WHO, "postgres,r1")),
        b_sees: (WHO, "postgres,postgres"),
        pins: true,
    },
    Case {
        change: "DO $$ BEGIN EXECUTE 'SET SESSION AUTHORIZATION r1'; END $$",
        a_sees: Some((WHO, "r1,r1")),
        b_sees: (WHO, "postgres,postgres"),
        pins: true,
    },
    // SQL PREPARE does not pin: the statement is shared under a Tandem name, and only its
    // client reaches it by its own name.
    Case {
        change: "PREPARE a_stmt AS SELECT 1",
        a_sees: Some(("EXECUTE a_stmt", "1")),
        b_sees: ("SELECT count(*) FROM pg_prepared_statements WHERE name = 'a_stmt'", "0"),
        pins: false,
    },
    Case {
        change: "LISTEN a_channel",
        a_sees: Some(("SELECT count(*) FROM pg_listening_channels()", "1")),
        b_sees: ("SELECT count(*) FROM pg_listening_channels()", "0"),
        pins: true,
    },
    Case {
        change: "CREATE TEMP TABLE a_temp (x int)",
        a_sees: Some(("SELECT count(*) FROM pg_class WHERE relname = 'a_temp'", "1")),
        b_sees: ("SELECT count(*) FROM pg_class WHERE relname = 'a_temp'", "0"),
        pins: true,
    },
    Case {
        change: "SELECT pg_advisory_lock(42)",
        a_sees: Some(("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "1")),
        b_sees: ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "0"),
        pins: true,
    },
    Case {
        change: "BEGIN; DECLARE a_cursor CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        a_sees: Some(("SELECT count(*) FROM pg_cursors", "1")),
        b_sees: ("SELECT count(*) FROM pg_cursors", "0"),
        pins: true,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_crosses_clients_on_one_backend() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::one_backend("transaction"))?;
    c.primary.psql("postgres", "CREATE ROLE r1; CREATE ROLE r2; GRANT r2 TO r1")?;
    let pid = "SELECT pg_backend_pid()";
    for case in CASES {
        let a = c.connect().await?;
        let a_pid = one(&a, pid).await?;
        a.batch_execute(case.change).await?;
        if let Some((sql, want)) = case.a_sees {
            assert_eq!(one(&a, sql).await?, want, "A after {:?}", case.change);
        }
        // A pinning change keeps the backend until A leaves.
        let a = (!case.pins).then_some(a);
        let b = c.connect().await?;
        assert_eq!(one(&b, pid).await?, a_pid, "B runs on A's backend ({:?})", case.change);
        assert_eq!(one(&b, case.b_sees.0).await?, case.b_sees.1, "B after A's {:?}", case.change);
        let Some(a) = a else { continue };
        if let Some((sql, want)) = case.a_sees {
            assert_eq!(one(&a, sql).await?, want, "A keeps {:?} after B used the backend", case.change);
        }
        // A leaves without undoing anything; the next client still gets a clean session.
        drop((a, b));
        let next = c.connect().await?;
        assert_eq!(one(&next, case.b_sees.0).await?, case.b_sees.1, "after A left ({:?})", case.change);
    }
    Ok(())
}
