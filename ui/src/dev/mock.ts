// Dev only: the dashboard against made-up data, without the Tauri shell
// (`npm run dev`, then open /mock.html). Add `?locked`, `?paused`, `?down`,
// `?first` or `?empty` to see other states. Not part of the build.
import { mockIPC } from '@tauri-apps/api/mocks';
import type { Entry, LedgerSummary, Pool, Status } from '../lib/api';
import { appInfo, disclosed, emptyTotals, schema, settings, status, taskEnded, taskStarted } from '../test/fixtures';

const q = new URLSearchParams(location.search);
let current: Status = status();
if (q.has('paused')) {
  current = status({
    state: 'paused',
    paused: true,
    manual_pause: { kind: 'until', until_ms: Date.now() + 25 * 60_000 },
    reasons: [
      { code: 'paused_by_user', text: 'paused by you until 14:30' },
      { code: 'user_active', text: 'user active 4 s ago; work starts after 3 min idle' },
      { code: 'power_ok', text: 'on AC power, battery 93 %' },
    ],
    decision: { action: { action: 'pause' }, reasons: [], traffic: 'all' },
    scheduler: { ...status().scheduler!, current_task: null, last_pool_error: 'lease request failed: timed out' },
    sensors: {
      idle_source: 'x11',
      snapshot: { ...status().sensors!.snapshot, user_idle: { secs: 4, nanos: 0 }, battery: { percent: 93, on_ac: true }, cpu_temp_c: 51 },
    },
    settings_errors: ['/home/u/.config/idlemesh/settings.toml: `cpu_cores` = 0: expected a whole number from 1 to 1024'],
  });
}
if (q.has('locked')) {
  current.settings = settings({
    cpu_cores: { value: 2, source: 'policy', locked: true },
    pool_url: { value: 'https://pool.corp.example', source: 'policy', locked: true },
    idle_minutes: { value: 10, source: 'policy_default', locked: false },
  });
}

const day = (n: number) => {
  const d = new Date(Date.now() - n * 86_400_000);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
};
const t = (k: number) => ({
  ...emptyTotals,
  tasks_finished: 10 * k,
  tasks_failed: k % 3,
  cpu_s: 2400 * k,
  energy_j: 36_000 * k,
  bytes_in: 1_200_000 * k,
  bytes_out: 40_000 * k,
  receipts: 10 * k,
  credits: 12.5 * k,
});
const summary: LedgerSummary = q.has('empty')
  ? { totals: emptyTotals, per_day: {}, per_pool: {}, disclosures: [] }
  : {
      totals: t(12),
      per_day: { [day(6)]: t(2), [day(4)]: t(5), [day(1)]: t(3), [day(0)]: t(2) },
      per_pool: { 'http://127.0.0.1:18470': t(9), 'https://a-very-long-pool-name.research.example.org/pool': t(3) },
      disclosures: [
        { at_ms: Date.now() - 6 * 86_400_000, pool: 'http://127.0.0.1:18470', fields: { cores: '2', memory_mb: '7900', os: 'linux', wasm: 'true' } },
      ],
    };
const entries: Entry[] = Array.from({ length: 40 }, (_, i): Entry => {
  const seq = 40 - i;
  const chain = { seq, at_ms: Date.now() - i * 60_000, prev_hash: 'a', hash: 'b' };
  const pool = 'http://127.0.0.1:18470';
  const reasons = [{ code: 'user_active' as const, text: 'user active 1 s ago; work starts after 3 min idle' }];
  switch (seq % 7) {
    case 0:
      return { ...chain, kind: 'task_started', body: taskStarted({ pool, task_id: seq }) };
    case 1:
      return { ...chain, kind: 'task_finished', body: taskEnded({ pool, task_id: seq, cpu_ms: 1200 + seq, output_bytes: 4096 }) };
    case 2: {
      const payload = JSON.stringify({ job_id: 1, task_id: seq, credits: 1.25 });
      return { ...chain, kind: 'receipt', body: { pool, pool_public_key: 'ab'.repeat(32), receipt: { payload, signature: 'x' } } };
    }
    case 3:
      return { ...chain, kind: 'paused', body: { reasons } };
    case 4:
      return { ...chain, kind: 'resumed', body: { reasons } };
    case 5:
      return { ...chain, kind: 'disclosure', body: disclosed({ pool }) };
    default:
      return {
        ...chain,
        kind: 'task_failed',
        body: taskEnded({ pool, task_id: seq, status: 'trapped', error: 'wasm trap: unreachable', cpu_ms: 1200 + seq }),
      };
  }
});
const pools: Pool[] = [
  { url: 'http://127.0.0.1:18470', public_key: 'ab'.repeat(32), current: true, locked: false, device_id: 1, organisation: null },
  { url: 'https://pool.corp.example', public_key: 'cd'.repeat(32), current: false, locked: true, device_id: 7, organisation: 'Example Corp' },
];

mockIPC(
  (cmd, args) => {
    const a = (args ?? {}) as Record<string, unknown>;
    if (q.has('down') && cmd === 'status') throw { code: 'not_running', message: 'the embedded agent has not started yet' };
    switch (cmd) {
      case 'status':
        return current;
      case 'app_info':
        return { ...appInfo, first_run: q.has('first') };
      case 'pause': {
        const p = { kind: 'until_resumed' } as const;
        const none = { kind: 'none' } as const;
        const pauses = { cpu: a.only === 'gpu' ? none : p, gpu: a.only === 'cpu' ? none : p };
        return { manual_pause: a.only ? none : p, pauses };
      }
      case 'resume':
        return { manual_pause: { kind: 'none' }, pauses: { cpu: { kind: 'none' }, gpu: { kind: 'none' } } };
      case 'settings_set':
        if (a.key === 'cpu_duty_cycle_percent' && a.value === '7') throw { code: 'bad_value', message: 'the agent says no to 7' };
        return { key: a.key, effective: { value: a.value, source: 'user', locked: false } };
      case 'settings_schema':
        return schema;
      case 'ledger_entries':
        return a.kind ? entries.filter((e) => e.kind === a.kind) : entries;
      case 'ledger_summary':
        return summary;
      case 'ledger_verify':
        return q.has('broken')
          ? { ok: false, entries: 12, receipts_checked: 3, head: 'e3b0'.repeat(16), first_bad: { seq: 12, reason: 'its content does not match its hash: the entry was altered' }, ledger: '/home/u/.local/share/idlemesh/ledger.sqlite' }
          : { ok: true, entries: 40, receipts_checked: 6, head: 'e3b0'.repeat(16), first_bad: null, ledger: '/home/u/.local/share/idlemesh/ledger.sqlite' };
      case 'ledger_export':
        return { path: `/home/u/Downloads/idlemesh-ledger.${a.format}`, entries: 40 };
      case 'pools':
        return pools;
      case 'pool_join':
      case 'pool_leave':
        return { url: a.url };
      case 'demo_start':
        return { url: 'http://127.0.0.1:40123' };
      case 'autostart_set':
        return { autostart: a.enabled };
    }
    throw { code: 'internal', message: `mock: no ${cmd}` };
  },
  { shouldMockEvents: true },
);

// Tauri's `freezePrototype: true` (src-tauri/tauri.conf.json), to catch libraries that trip over it.
if (q.has('freeze')) Object.freeze(Object.prototype);

void import('../main');
