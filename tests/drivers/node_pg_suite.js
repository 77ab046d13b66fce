#!/usr/bin/env node
// node-postgres (pg) against the Tandem proxy, compared with PostgreSQL itself.
//
// Usage: node node_pg_suite.js --direct DSN --proxy DSN [--mode transaction|session] [--only NAME]
//
// DSNs are libpq key=value strings. Every check runs against the server directly and then
// through the proxy and must give the same result (rows, SQLSTATEs, no hang, no dropped
// connection). node-postgres sends named queries as Parse/Bind/Describe/Execute/Sync once
// per connection and then only Bind/Execute, and plain queries as simple Query messages
// (several statements allowed). Exits 1 on a mismatch, 2 when `pg` cannot be loaded (set
// NODE_PATH to a node_modules with pg installed).

'use strict';

// The pipelined check queues queries on purpose.
process.noDeprecation = true;

let pg;
try {
  pg = require('pg');
} catch (e) {
  console.log('SKIP: node-postgres is not installed (npm install pg; set NODE_PATH)');
  process.exit(2);
}
let Cursor = null;
try {
  Cursor = require('pg-cursor');
} catch (e) {
  Cursor = null;
}

const CHECK_TIMEOUT_MS = 30000;
const checks = [];
const check = (name, f) => checks.push([name, f]);

function config(dsn) {
  const d = Object.fromEntries(dsn.split(/\s+/).map((kv) => kv.split('=')));
  return { host: d.host, port: Number(d.port), user: d.user, database: d.dbname, connectionTimeoutMillis: 10000 };
}

async function connect(dsn) {
  const c = new pg.Client(config(dsn));
  c.on('error', () => {});
  await c.connect();
  return c;
}

const err = (e) => ['error', e.code || e.message];

async function tryQuery(c, q, values) {
  try {
    const r = await c.query(q, values);
    return Array.isArray(r) ? r.map((x) => [x.command, x.rows]) : [r.command, r.rows];
  } catch (e) {
    return err(e);
  }
}

check('named_queries', async (dsn, t) => {
  const out = [];
  const c = await connect(dsn);
  try {
    await c.query(`drop table if exists nq_${t}`);
    await c.query(`create table nq_${t} (id int primary key, v text)`);
    for (let i = 0; i < 20; i++) {
      await c.query({ name: 'ins', text: `insert into nq_${t} values ($1, $2)`, values: [i, `v${i}`] });
    }
    out.push(await tryQuery(c, { name: 'ins', text: `insert into nq_${t} values ($1, $2)`, values: [1, 'dup'] }));
    out.push(await tryQuery(c, { name: 'sel', text: `select v from nq_${t} where id = $1`, values: [3] }));
    out.push(await tryQuery(c, { name: 'sel', text: `select v from nq_${t} where id = $1`, values: [4] }));
    // A named query whose Parse fails, then the same name with the same text again.
    out.push(await tryQuery(c, { name: 'bad', text: 'selec $1', values: [1] }));
    out.push(await tryQuery(c, { name: 'bad', text: 'selec $1', values: [1] }));
    // Row mode arrays, binary results.
    const r = await c.query({ text: 'select 1 as a, $1::text as b', values: ['x'], rowMode: 'array' });
    out.push(r.rows, r.fields.map((f) => [f.name, f.dataTypeID]));
    const b = await c.query({ text: 'select 42::int4 as n, $1::bytea as x', values: [Buffer.from([0, 1, 2])], binary: true });
    out.push(b.rows.map((row) => [String(row.n), Buffer.from(row.x).toString('hex')]));
    await c.query(`drop table nq_${t}`);
  } finally {
    await c.end();
  }
  return out;
});

check('simple_multi_statement_and_errors', async (dsn, t) => {
  const out = [];
  const c = await connect(dsn);
  try {
    out.push(await tryQuery(c, 'select 1 as a; select 2 as b; select 3 as c'));
    out.push(await tryQuery(c, 'select 1; select 1/0; select 3'));
    out.push(await tryQuery(c, 'select 1'));
    out.push(await tryQuery(c, 'selec 1'));
    out.push(await tryQuery(c, 'select * from no_such_table_x'));
    await c.query('begin');
    out.push(await tryQuery(c, 'select 1/0'));
    out.push(await tryQuery(c, 'select 1'));
    out.push(await tryQuery(c, 'rollback'));
    out.push(await tryQuery(c, 'select $1::int + 1', [41]));
    out.push(await tryQuery(c, ''));
    const notices = [];
    c.on('notice', (n) => notices.push([n.severity, n.message]));
    await c.query("do $$ begin raise notice 'n1'; raise warning 'w1'; end $$");
    out.push(notices);
    try {
      await c.query("do $$ begin raise exception using errcode = 'P0042', message = 'boom', detail = 'd', hint = 'h'; end $$");
    } catch (e) {
      out.push([e.code, e.message, e.detail, e.hint, e.severity]);
    }
  } finally {
    await c.end();
  }
  return out;
});

check('pipelined_queries', async (dsn, t) => {
  // node-postgres queues queries and sends each when the previous one finished; firing many
  // at once exercises its queue with named, unnamed and failing queries interleaved.
  const c = await connect(dsn);
  try {
    await c.query(`drop table if exists pq_${t}`);
    await c.query(`create table pq_${t} (id int primary key)`);
    const ps = [];
    for (let i = 0; i < 50; i++) {
      const q = i % 10 === 5
        ? { name: 'dupins', text: `insert into pq_${t} values ($1)`, values: [0] }
        : { name: 'pins', text: `insert into pq_${t} values ($1) returning id`, values: [i] };
      ps.push(tryQuery(c, q));
    }
    const res = await Promise.all(ps);
    const count = await c.query(`select count(*)::int as n from pq_${t}`);
    await c.query(`drop table pq_${t}`);
    return [res, count.rows];
  } finally {
    await c.end();
  }
});

check('transactions', async (dsn, t) => {
  const out = [];
  const c = await connect(dsn);
  try {
    await c.query(`drop table if exists tx_${t}`);
    await c.query(`create table tx_${t} (id int)`);
    await c.query('begin isolation level serializable');
    out.push((await c.query('show transaction_isolation')).rows);
    await c.query({ name: 'txins', text: `insert into tx_${t} values ($1)`, values: [1] });
    await c.query('savepoint s1');
    out.push(await tryQuery(c, { name: 'txins', text: `insert into tx_${t} values ($1)`, values: ['x'] }));
    await c.query('rollback to savepoint s1');
    await c.query({ name: 'txins', text: `insert into tx_${t} values ($1)`, values: [2] });
    await c.query('commit');
    out.push((await c.query(`select array_agg(id order by id) as ids from tx_${t}`)).rows);
    await c.query(`drop table tx_${t}`);
  } finally {
    await c.end();
  }
  return out;
});

check('cursor', async (dsn, t) => {
  if (!Cursor) return 'pg-cursor not installed';
  const out = [];
  const c = await connect(dsn);
  try {
    const read = (cur, n) => new Promise((res, rej) => cur.read(n, (e, rows) => (e ? rej(e) : res(rows))));
    const close = (cur) => new Promise((res) => cur.close(() => res()));
    const cur = c.query(new Cursor('select g from generate_series(1, 100) g where g > $1', [10]));
    out.push(await read(cur, 5));
    out.push((await read(cur, 50)).length);
    out.push((await read(cur, 1000)).length);
    await close(cur);
    await c.query('begin');
    const cur2 = c.query(new Cursor('select 1/(g-5) as x from generate_series(1, 10) g'));
    try {
      out.push(await read(cur2, 3));
      out.push(await read(cur2, 3));
    } catch (e) {
      out.push(err(e));
    }
    await close(cur2);
    await c.query('rollback');
    out.push((await c.query('select 1 as ok')).rows);
  } finally {
    await c.end();
  }
  return out;
});

check('pool_concurrency_and_large_rows', async (dsn, t) => {
  const pool = new pg.Pool({ ...config(dsn), max: 15 });
  pool.on('error', () => {});
  try {
    await pool.query(`drop table if exists pc_${t}`);
    await pool.query(`create table pc_${t} (w int, i int)`);
    const work = async (w) => {
      for (let i = 0; i < 10; i++) {
        const c = await pool.connect();
        try {
          await c.query('begin');
          await c.query({ name: 'pcins', text: `insert into pc_${t} values ($1, $2)`, values: [w, i] });
          await c.query({ name: 'pccount', text: `select count(*) from pc_${t} where w = $1`, values: [w] });
          await c.query('commit');
        } finally {
          c.release();
        }
      }
    };
    await Promise.all([...Array(30).keys()].map(work));
    const r = await pool.query(`select count(*)::int as n, count(distinct w)::int as w from pc_${t}`);
    await pool.query(`drop table pc_${t}`);
    const big = await pool.query("select repeat('x', 6000000) as s, md5(repeat('x', 6000000)) as h");
    const param = 'y'.repeat(4000000);
    const echo = await pool.query('select length($1::text) as n', [param]);
    return [r.rows, big.rows[0].s.length, big.rows[0].h, echo.rows];
  } finally {
    await pool.end();
  }
});

check('listen_notify', async (dsn, t) => {
  const a = await connect(dsn);
  const b = await connect(dsn);
  try {
    const got = [];
    const done = new Promise((resolve) => {
      a.on('notification', (n) => {
        got.push([n.channel, n.payload]);
        if (got.length === 2) resolve();
      });
    });
    await a.query(`listen ch_${t}`);
    await b.query(`notify ch_${t}, 'one'`);
    await b.query('select pg_notify($1, $2)', [`ch_${t}`, 'two']);
    await done;
    return got.map(([ch, p]) => [ch === `ch_${t}`, p]);
  } finally {
    await a.end();
    await b.end();
  }
});

async function runOne(f, dsn, tag) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(['TIMEOUT']), CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([f(dsn, tag), timeout]);
  } catch (e) {
    return ['exception', e.code || null, String(e.message).split('\n')[0]];
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const direct = opt('direct');
  const proxy = opt('proxy');
  const mode = opt('mode', 'transaction');
  const only = opt('only', null);
  const version = require('pg/package.json').version;
  console.log(`node-postgres ${version}, pg-cursor ${Cursor ? 'yes' : 'no'}, mode ${mode}`);
  let failed = 0;
  for (const [name, f] of checks) {
    if (only && !name.includes(only)) continue;
    const t0 = Date.now();
    const want = await runOne(f, direct, 'd');
    const got = await runOne(f, proxy, 'p');
    const dt = ((Date.now() - t0) / 1000).toFixed(1);
    const w = JSON.stringify(want);
    const g = JSON.stringify(got);
    if (w === g && !(Array.isArray(want) && (want[0] === 'TIMEOUT' || want[0] === 'exception'))) {
      console.log(`ok ${name} (${dt}s)`);
    } else {
      failed++;
      console.log(`MISMATCH ${name} (${dt}s)\n   direct: ${w}\n   proxy:  ${g}`);
    }
  }
  console.log(`${failed} mismatches`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.log(e && e.stack);
  process.exit(3);
});
