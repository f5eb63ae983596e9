import { describe, expect, it } from 'vitest';
import {
  actionWords,
  settingText,
  clock,
  dailySeries,
  entrySummary,
  errorTitle,
  formatBytes,
  formatDateTime,
  formatDuration,
  formatEnergy,
  formatHours,
  formatWhen,
  isEmptyTotals,
  kindPauseTexts,
  manualPauseText,
  minutesWords,
  nextStartText,
  settingRows,
  shortHash,
  sourceWords,
  stateWords,
} from './format';
import { toApiError } from './api';
import { disclosed, emptyTotals, schema, settings, status, taskEnded, taskStarted } from '../test/fixtures';

const at = (h: number, m: number, day = 29) => new Date(2026, 10, day, h, m, 0).getTime();

describe('stateWords', () => {
  it('maps every documented state to plain words', () => {
    expect(stateWords('working')).toBe('Working for the pool');
    expect(stateWords('waiting_for_work')).toBe('Waiting for work');
    expect(stateWords('paused')).toBe('Paused');
    expect(stateWords('no_pool')).toBe('Not connected to a pool');
    expect(stateWords('connecting')).toBe('Connecting to the pool');
    expect(stateWords('starting')).toBe('Starting');
  });
  it('keeps an unknown state readable', () => {
    expect(stateWords('some_new_state')).toBe('some new state');
  });
});

describe('times', () => {
  it('shows local wall-clock time, 24-hour', () => {
    expect(clock(at(14, 30))).toBe('14:30');
    expect(clock(at(9, 5))).toBe('09:05');
    expect(formatDateTime(new Date(2026, 0, 2, 3, 4, 5).getTime())).toBe('2026-01-02 03:04:05');
  });
  it('says "tomorrow" for the next day and a date beyond', () => {
    const now = at(22, 0);
    expect(formatWhen(at(23, 15), now)).toBe('23:15');
    expect(formatWhen(at(8, 0, 30), now)).toBe('tomorrow 08:00');
    expect(formatWhen(new Date(2026, 11, 3, 8, 0).getTime(), now)).toBe('2026-12-03 08:00');
  });
  it('formats durations', () => {
    expect(formatDuration(45_000)).toBe('45 s');
    expect(formatDuration(192_000)).toBe('3 min 12 s');
    expect(formatDuration(2 * 3600_000 + 5 * 60_000)).toBe('2 h 05 min');
    expect(formatDuration(27 * 3600_000)).toBe('1 d 3 h');
    expect(formatDuration(-5)).toBe('0 s');
  });
  it('says minutes in words', () => {
    expect(minutesWords(3)).toBe('3 minutes');
    expect(minutesWords(1)).toBe('1 minute');
    expect(minutesWords(0.5)).toBe('30 seconds');
    expect(minutesWords(1.5)).toBe('1.5 minutes');
    expect(minutesWords(120)).toBe('2 hours');
  });
});

describe('numbers', () => {
  it('formats bytes in SI units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1536)).toBe('1.54 kB');
    expect(formatBytes(12_300_000)).toBe('12.3 MB');
    expect(formatBytes(2_000_000_000)).toBe('2 GB');
  });
  it('formats energy as Wh and kWh', () => {
    expect(formatEnergy(0)).toBe('0 Wh');
    expect(formatEnergy(3600)).toBe('1 Wh');
    expect(formatEnergy(36)).toBe('0.01 Wh');
    expect(formatEnergy(3600 * 250)).toBe('250 Wh');
    expect(formatEnergy(3600 * 1500)).toBe('1.5 kWh');
  });
  it('formats hours from seconds', () => {
    expect(formatHours(0)).toBe('0');
    expect(formatHours(1512)).toBe('0.42');
    expect(formatHours(3600 * 12.345)).toBe('12.3');
  });
  it('shortens hashes', () => {
    expect(shortHash('0123456789abcdef0123')).toBe('0123456789ab…');
    expect(shortHash('abc')).toBe('abc');
    expect(shortHash(null)).toBe('');
  });
});

describe('manualPauseText', () => {
  it('says until when and until resumed', () => {
    const now = at(14, 0);
    expect(manualPauseText({ kind: 'until', until_ms: at(14, 30) }, now)).toBe('Paused by you until 14:30');
    expect(manualPauseText({ kind: 'until_resumed' }, now)).toBe('Paused by you until you resume');
    expect(manualPauseText({ kind: 'none' }, now)).toBeNull();
    expect(manualPauseText(null, now)).toBeNull();
  });
});

describe('kindPauseTexts', () => {
  it('says each kind paused alone, and nothing when both are alike', () => {
    const now = at(14, 0);
    const none = { kind: 'none' } as const;
    expect(kindPauseTexts({ cpu: none, gpu: { kind: 'until_resumed' } }, now)).toEqual([
      'GPU work paused by you until you resume',
    ]);
    expect(kindPauseTexts({ cpu: { kind: 'until', until_ms: at(14, 30) }, gpu: { kind: 'until_resumed' } }, now)).toEqual([
      'Processor work paused by you until 14:30',
      'GPU work paused by you until you resume',
    ]);
    expect(kindPauseTexts({ cpu: { kind: 'until_resumed' }, gpu: { kind: 'until_resumed' } }, now)).toEqual([]);
    expect(kindPauseTexts({ cpu: none, gpu: none }, now)).toEqual([]);
    expect(kindPauseTexts(null, now)).toEqual([]);
  });
});

describe('actionWords', () => {
  it('says when only the GPU works', () => {
    expect(actionWords({ action: 'run', cores: 2, duty_cycle_percent: 100, gpu: true, cpu: false })).toBe(
      'the GPU only, full time',
    );
  });

  it('says cores and duty cycle', () => {
    expect(actionWords({ action: 'run', cores: 1, duty_cycle_percent: 60, gpu: false })).toBe(
      '1 core, 60 % of the time',
    );
    expect(actionWords({ action: 'run', cores: 4, duty_cycle_percent: 100, gpu: true })).toBe(
      '4 cores, full time, and the GPU',
    );
    expect(actionWords({ action: 'pause' })).toBe('none (paused)');
  });
});

describe('nextStartText', () => {
  const now = at(14, 0);
  it('waits for the idle time the user set', () => {
    const s = status({
      state: 'paused',
      reasons: [{ code: 'user_active', text: 'user active 2 s ago; work starts after 180 s idle' }],
      settings: settings({ idle_minutes: { value: 3.0 } }),
    });
    expect(nextStartText(s, now)).toBe('when you have been away 3 minutes');
  });
  it('names the end of a manual pause first', () => {
    const s = status({
      state: 'paused',
      manual_pause: { kind: 'until', until_ms: at(14, 30) },
      reasons: [
        { code: 'paused_by_user', text: 'paused by you until 14:30' },
        { code: 'on_battery', text: 'on battery 40%, and running on battery is off' },
      ],
    });
    expect(nextStartText(s, now)).toBe('at 14:30 when your pause ends and when the charger is plugged in');
  });
  it('uses the start of the allowed hours', () => {
    const s = status({
      state: 'paused',
      reasons: [{ code: 'outside_hours', text: 'outside allowed hours (22:00–06:00)' }],
      settings: settings({ allowed_hours: { value: '22:00-06:00', source: 'user' } }),
    });
    expect(nextStartText(s, now)).toBe('at 22:00 when your allowed hours begin');
  });
  it('says nothing while working, and something for the other states', () => {
    expect(nextStartText(status({ state: 'working' }), now)).toBeNull();
    expect(nextStartText(status({ state: 'no_pool' }), now)).toMatch(/join a pool/);
    expect(nextStartText(status({ state: 'paused', manual_pause: { kind: 'until_resumed' }, reasons: [] }), now)).toBe(
      'when you resume',
    );
  });
});

describe('entrySummary', () => {
  it('summarises a finished task', () => {
    const s = entrySummary({
      kind: 'task_finished',
      body: taskEnded({ job_id: 1, task_id: 3, cpu_ms: 1234, output_bytes: 2048 }),
    });
    expect(s).toBe('job 1, task 3 finished: ok, 1,234 ms CPU, 2.05 kB out');
  });
  it('summarises a failed task with its error', () => {
    const s = entrySummary({
      kind: 'task_failed',
      body: taskEnded({ job_id: 2, task_id: 7, status: 'trapped', error: 'unreachable', cpu_ms: 250 }),
    });
    expect(s).toBe('job 2, task 7 failed: trapped, unreachable, 250 ms CPU');
  });
  it('reads the credits out of a signed receipt payload', () => {
    const payload = JSON.stringify({ receipt_id: 9, job_id: 1, task_id: 3, credits: 2.5 });
    const s = entrySummary({
      kind: 'receipt',
      body: { pool: 'http://p', pool_public_key: 'ab', receipt: { payload, signature: 'x' } },
    });
    expect(s).toBe('receipt for job 1, task 3: 2.5 credits from http://p');
  });
  it('lists disclosed fields', () => {
    const s = entrySummary({ kind: 'disclosure', body: disclosed({ fields: { cores: '2', os: 'linux' } }) });
    expect(s).toBe('sent to http://p (enrollment): cores = 2, os = linux');
  });
  it('gives pause reasons', () => {
    const s = entrySummary({
      kind: 'paused',
      body: {
        reasons: [
          { code: 'user_active', text: 'user active 1 s ago' },
          { code: 'on_battery', text: 'b' },
        ],
      },
    });
    expect(s).toBe('paused: user active 1 s ago; b');
  });
  it('says what it started, refused and sent', () => {
    expect(entrySummary({ kind: 'task_started', body: taskStarted({ resumed_from_checkpoint: true }) })).toBe(
      'job 1, task 3 started (kernel 8abc8abc8abc…, from a checkpoint)',
    );
    expect(entrySummary({ kind: 'task_refused', body: { pool: 'http://p', task_id: null, reason: 'bad manifest' } })).toBe(
      'task refused: bad manifest',
    );
    expect(
      entrySummary({ kind: 'traffic', body: { pool: 'http://p', sent_bytes: 2000, received_bytes: 3_000_000 } }),
    ).toBe('2 kB sent to and 3 MB received from http://p');
  });
  it('shows an entry the agent could not read as it is stored', () => {
    expect(
      entrySummary({ kind: 'unreadable', body: { kind: 'quota_used', body: '{"a":1}', why: 'unknown variant' } }),
    ).toBe('quota used (not readable here: unknown variant): {"a":1}');
  });
});

describe('dailySeries', () => {
  it('fills missing days with zero and picks the metric', () => {
    const perDay = {
      '2026-11-27': { ...emptyTotals, cpu_s: 3600, tasks_finished: 4 },
      '2026-11-29': { ...emptyTotals, cpu_s: 1800, tasks_finished: 1 },
    };
    expect(dailySeries(perDay, 'cpu_hours')).toEqual({
      labels: ['2026-11-27', '2026-11-28', '2026-11-29'],
      values: [1, 0, 0.5],
    });
    expect(dailySeries(perDay, 'tasks').values).toEqual([4, 0, 1]);
  });
  it('keeps only the last days and copes with month ends', () => {
    const perDay = {
      '2026-10-01': { ...emptyTotals, credits: 1 },
      '2026-11-01': { ...emptyTotals, credits: 2 },
    };
    const s = dailySeries(perDay, 'credits', 3);
    expect(s.labels).toEqual(['2026-10-30', '2026-10-31', '2026-11-01']);
    expect(s.values).toEqual([0, 0, 2]);
  });
  it('is empty for an empty ledger', () => {
    expect(dailySeries({}, 'energy_wh')).toEqual({ labels: [], values: [] });
    expect(isEmptyTotals(emptyTotals)).toBe(true);
    expect(isEmptyTotals({ ...emptyTotals, tasks_failed: 1 })).toBe(false);
  });
});

describe('settings', () => {
  it("orders the rows as the agent's schema does, keys it does not name last", () => {
    const rows = settingRows(schema, { ...settings(), zzz_new: {} });
    expect(rows.slice(0, 3).map((r) => r.key)).toEqual(['pool_url', 'idle_minutes', 'cpu_cores']);
    expect(rows.at(-2)?.key).toBe('max_other_cpu_percent');
    expect(rows.at(-1)).toMatchObject({ key: 'zzz_new', label: 'zzz new', kind: { type: 'text' } });
    expect(rows).toHaveLength(15);
    expect(rows.find((r) => r.key === 'cpu_cores')?.kind).toEqual({ type: 'int', min: 1, max: 1024 });
    // Before the schema arrives: every key as a plain input, sorted.
    expect(settingRows([], { b: {}, a: {} }).map((r) => [r.key, r.kind.type])).toEqual([
      ['a', 'text'],
      ['b', 'text'],
    ]);
  });
  it('names where a value comes from', () => {
    expect(sourceWords('default')).toBe('default');
    expect(sourceWords('user')).toBe('your setting');
    expect(sourceWords('policy_default')).toBe('organisation default');
    expect(sourceWords('policy')).toBe('organisation');
  });
});

describe('errors', () => {
  it('normalises what invoke rejects with', () => {
    const a = toApiError({ code: 'bad_value', message: 'expected a whole number from 1 to 1024' });
    expect(a.code).toBe('bad_value');
    expect(a.message).toBe('expected a whole number from 1 to 1024');
    const b = toApiError('command status not found');
    expect(b.code).toBe('internal');
    expect(b.message).toBe('command status not found');
    const c = toApiError('{"code":"not_running","message":"the agent is not running"}');
    expect(c.code).toBe('not_running');
    expect(toApiError(new Error('boom')).message).toBe('boom');
  });
  it('titles error codes', () => {
    expect(errorTitle('not_running')).toMatch(/not running/);
    expect(errorTitle('whatever')).toBe('Something went wrong');
  });
});

describe('settingText', () => {
  it('shows a list of sandbox layers as names separated by commas, and nothing for none', () => {
    expect(settingText(['seccomp', 'landlock'])).toBe('seccomp, landlock');
    expect(settingText([])).toBe('');
    expect(settingText(null)).toBe('');
    expect(settingText(60)).toBe('60');
  });
});
