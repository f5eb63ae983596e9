import { describe, expect, it } from 'vitest';
import { fireEvent, render, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import Ledger from './Ledger.svelte';
import type { Entry } from '../lib/api';
import { disclosed, taskEnded } from '../test/fixtures';

function $(sel: string): HTMLElement {
  const el = document.querySelector<HTMLElement>(sel);
  if (!el) throw new Error(`no ${sel}`);
  return el;
}

const HEAD = 'f'.repeat(64);
const entries: Entry[] = [
  { seq: 3, at_ms: 1795984290379, kind: 'paused', body: { reasons: [{ code: 'user_active', text: 'user active 1 s ago' }] }, prev_hash: 'b', hash: 'c' },
  { seq: 2, at_ms: 1795984289379, kind: 'task_finished', body: taskEnded({ cpu_ms: 10, output_bytes: 5 }), prev_hash: 'a', hash: 'b' },
  { seq: 1, at_ms: 1795984288379, kind: 'disclosure', body: disclosed({ purpose: null }), prev_hash: '0', hash: 'a' },
];

describe('Ledger page', () => {
  it('lists entries with a one-line summary and filters them', async () => {
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'ledger_entries') {
        calls.push(args);
        const kind = (args as { kind: string | null }).kind;
        return kind ? entries.filter((e) => e.kind === kind) : entries;
      }
    });
    render(Ledger);
    await waitFor(() => expect(document.querySelectorAll('#ledger-table tbody tr[data-kind]')).toHaveLength(3));
    expect($('#ledger-table').textContent).toContain('job 1, task 3 finished: ok, 10 ms CPU, 5 B out');
    await fireEvent.input($('#ledger-filter'), { target: { value: 'cores' } });
    expect(document.querySelectorAll('#ledger-table tbody tr[data-kind]')).toHaveLength(1);
    await fireEvent.input($('#ledger-filter'), { target: { value: '' } });
    const select = $('#ledger-kind') as HTMLSelectElement;
    select.value = 'paused';
    await fireEvent.change(select);
    await waitFor(() => expect(document.querySelectorAll('#ledger-table tbody tr[data-kind]')).toHaveLength(1));
    expect(calls).toContainEqual({ kind: 'paused', limit: 1000 });
    expect(calls[0]).toEqual({ kind: null, limit: 1000 });
  });

  it('shows an intact chain', async () => {
    mockIPC((cmd) => {
      if (cmd === 'ledger_entries') return entries;
      if (cmd === 'ledger_verify')
        return { ok: true, entries: 42, receipts_checked: 7, head: HEAD, first_bad: null, ledger: '/d/ledger.sqlite' };
    });
    render(Ledger);
    await fireEvent.click($('#verify'));
    await waitFor(() => expect($('#verify-result').textContent).toContain('Chain intact: 42 entries, 7 receipt signatures valid'));
    expect($('#verify-result').textContent).toContain(HEAD);
    expect($('#verify-result').classList.contains('ok')).toBe(true);
    expect($('#verify-result').classList.contains('bad')).toBe(false);
  });

  it('shows a broken chain with the first bad entry and its reason', async () => {
    mockIPC((cmd) => {
      if (cmd === 'ledger_entries') return entries;
      if (cmd === 'ledger_verify')
        return {
          ok: false,
          entries: 5,
          receipts_checked: 1,
          head: HEAD,
          first_bad: { seq: 5, reason: 'its content does not match its hash: the entry was altered' },
          ledger: '/d/ledger.sqlite',
        };
    });
    render(Ledger);
    await fireEvent.click($('#verify'));
    await waitFor(() =>
      expect($('#verify-result').textContent).toContain(
        'Chain broken at entry 5: its content does not match its hash: the entry was altered',
      ),
    );
    expect($('#verify-result').textContent).not.toContain('Chain intact');
    expect($('#verify-result').textContent).toContain(HEAD);
    expect($('#verify-result').classList.contains('bad')).toBe(true);
  });

  it('exports and shows the path and the count', async () => {
    mockIPC((cmd, args) => {
      if (cmd === 'ledger_entries') return [];
      if (cmd === 'ledger_export')
        return { path: `/home/u/Downloads/idlemesh-ledger.${(args as { format: string }).format}`, entries: 3 };
    });
    render(Ledger);
    await waitFor(() => expect($('#ledger-table').textContent).toContain('Nothing yet'));
    await fireEvent.click($('#export-json'));
    await waitFor(() =>
      expect($('#export-result').textContent?.replace(/\s+/g, ' ').trim()).toBe(
        'Exported 3 entries to /home/u/Downloads/idlemesh-ledger.json',
      ),
    );
    await fireEvent.click($('#export-csv'));
    await waitFor(() => expect($('#export-result').textContent).toContain('idlemesh-ledger.csv'));
  });
});
