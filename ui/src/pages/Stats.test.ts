import { describe, expect, it } from 'vitest';
import { render, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import Stats from './Stats.svelte';
import Privacy from './Privacy.svelte';
import { appInfo, emptyTotals, status } from '../test/fixtures';
import { feed } from '../lib/status.svelte';

function $(sel: string): HTMLElement {
  const el = document.querySelector<HTMLElement>(sel);
  if (!el) throw new Error(`no ${sel}`);
  return el;
}

const busy = {
  ...emptyTotals,
  tasks_finished: 12,
  tasks_failed: 1,
  cpu_s: 5400,
  energy_j: 3600 * 20,
  bytes_in: 2_000_000,
  bytes_out: 30_000,
  receipts: 12,
  credits: 24.5,
  earnings: { EUR: 0.049 },
};

const summary = {
  totals: busy,
  per_day: { '2026-11-28': busy },
  per_pool: { 'http://127.0.0.1:18470': busy },
  disclosures: [{ at_ms: new Date(2026, 10, 28, 9, 0).getTime(), pool: 'http://127.0.0.1:18470', fields: { cores: '2', os: 'linux' } }],
};

describe('Stats page', () => {
  it('says "Nothing yet" for an empty ledger', async () => {
    mockIPC((cmd) =>
      cmd === 'ledger_summary' ? { totals: emptyTotals, per_day: {}, per_pool: {}, disclosures: [] } : undefined,
    );
    render(Stats);
    await waitFor(() => expect($('#totals').textContent).toContain('Nothing yet'));
    expect($('#totals').textContent).not.toContain('Earned');
    expect($('#per-pool').textContent).toContain('Nothing yet');
    expect(document.querySelector('canvas#chart-daily')).not.toBeNull();
  });

  it('shows totals and the per-pool table', async () => {
    mockIPC((cmd) => (cmd === 'ledger_summary' ? summary : undefined));
    render(Stats);
    await waitFor(() => expect($('#totals').textContent).toContain('1.5'));
    const totals = $('#totals').textContent!;
    expect(totals).toContain('24.5');
    expect(totals).toContain('20 Wh');
    expect(totals).toContain('2 MB');
    expect(totals).not.toContain('Nothing yet');
    expect(totals).toContain('0.049 EUR');
    expect($('#per-pool').textContent).toContain('http://127.0.0.1:18470');
    expect($('#per-pool').textContent).toContain('0.049 EUR');
    expect($('#daily-table').textContent).toContain('2026-11-28');
  });
});

describe('Privacy page', () => {
  it('lists disclosures, traffic and kernel access', async () => {
    mockIPC((cmd) => (cmd === 'ledger_summary' ? summary : cmd === 'app_info' ? appInfo : undefined));
    render(Privacy);
    await waitFor(() => expect($('#disclosures').textContent).toContain('cores'));
    expect($('#disclosures').textContent).toContain('linux');
    expect($('#disclosures').textContent).toContain('2026-11-28 09:00:00');
    expect($('#traffic').textContent).toContain('30 kB');
    expect($('#traffic').textContent).toContain('2 MB');
    await waitFor(() => expect($('#kernel-access').textContent).toContain('the network'));
    expect($('#kernel-allowed').textContent).toContain('a fixed clock');
  });
});

describe('Privacy page, the worker sandbox', () => {
  const layers = {
    profile: 'cpu' as const,
    no_new_privs: true,
    fds_closed: true,
    empty_env: true,
    private_cwd: true,
    rlimits: false,
    landlock_abi: 7,
    landlock_net: true,
    landlock_all_threads: true,
    netns: false,
    seccomp: true,
    missing: { netns: 'this system does not allow unprivileged user namespaces', rlimits: 'RLIMIT_NPROC counts every process' },
  };

  it('says in words what the layers mean and names each missing one with why', async () => {
    feed.reset();
    const s = status({
      sandbox: layers,
      sandbox_in_words: 'Tasks cannot read your files or use the network, and cannot start programs or touch other processes.',
    });
    mockIPC((cmd) => (cmd === 'status' ? s : cmd === 'ledger_summary' ? summary : cmd === 'app_info' ? appInfo : undefined));
    render(Privacy);
    await waitFor(() => expect($('#sandbox-words').textContent).toContain('Tasks cannot read your files or use the network'));
    const missing = $('#sandbox-missing').textContent!;
    expect(missing).toContain('netns is not in force: this system does not allow unprivileged user namespaces');
    expect(missing).toContain('rlimits');
  });

  it('says the walls are not known before a worker started', async () => {
    feed.reset();
    mockIPC((cmd) => (cmd === 'status' ? status({ sandbox: null, sandbox_in_words: null }) : cmd === 'app_info' ? appInfo : undefined));
    render(Privacy);
    await waitFor(() => expect($('#sandbox-words').textContent).toContain('known once a worker has started'));
    expect(document.querySelector('#sandbox-missing')).toBeNull();
  });
});
