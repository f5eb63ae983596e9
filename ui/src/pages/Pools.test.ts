import { describe, expect, it } from 'vitest';
import { fireEvent, render, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import Pools from './Pools.svelte';
import type { Pool } from '../lib/api';

function $<T extends HTMLElement = HTMLElement>(sel: string): T {
  const el = document.querySelector<T>(sel);
  if (!el) throw new Error(`no ${sel}`);
  return el;
}

const pools: Pool[] = [
  { url: 'https://corp.example.org', public_key: 'aa'.repeat(32), current: true, locked: true, device_id: 12, organisation: 'Example Corp' },
  { url: 'http://127.0.0.1:18470', public_key: 'bb'.repeat(32), current: false, locked: false, device_id: 1, organisation: null },
];

describe('Pools page', () => {
  it("shows the agent's own words for a bad URL", async () => {
    const message = 'pool URL "pool.example.org": expected a URL starting with http:// or https://';
    const calls: string[] = [];
    mockIPC((cmd) => {
      calls.push(cmd);
      if (cmd === 'pools') return [];
      if (cmd === 'pool_join') throw { code: 'bad_value', message };
    });
    render(Pools);
    await waitFor(() => expect(calls).toEqual(['pools']));
    await fireEvent.input($('#join-url'), { target: { value: 'pool.example.org' } });
    await fireEvent.click($('#join'));
    await waitFor(() => expect($('#join-result').textContent).toContain(message));
    expect($('#join-result').classList.contains('error')).toBe(true);
    expect(calls).toEqual(['pools', 'pool_join']);
  });

  it('joins with a token and lists pools with their markers', async () => {
    const calls: [string, unknown][] = [];
    mockIPC((cmd, args) => {
      calls.push([cmd, args]);
      if (cmd === 'pools') return pools;
      if (cmd === 'pool_join') return { url: 'https://new.example.org' };
      if (cmd === 'pool_leave') return { url: (args as { url: string }).url };
    });
    render(Pools);
    await waitFor(() => expect(document.querySelectorAll('.pool-row')).toHaveLength(2));
    const [corp, local] = [...document.querySelectorAll<HTMLElement>('.pool-row')];
    expect(corp.textContent).toContain('current');
    expect(corp.textContent).toContain('Example Corp');
    expect(corp.textContent).toContain('managed by your organisation');
    expect(corp.querySelector<HTMLButtonElement>('.leave')!.disabled).toBe(true);
    expect(local.querySelector<HTMLButtonElement>('.leave')!.disabled).toBe(false);
    expect(local.textContent).not.toContain('managed by your organisation');

    await fireEvent.click(local.querySelector('.leave')!);
    await waitFor(() => expect(calls).toContainEqual(['pool_leave', { url: 'http://127.0.0.1:18470' }]));

    await fireEvent.input($('#join-url'), { target: { value: ' https://new.example.org ' } });
    await fireEvent.input($('#join-token'), { target: { value: 'tok-123' } });
    await fireEvent.click($('#join'));
    await waitFor(() => expect(calls).toContainEqual(['pool_join', { url: 'https://new.example.org', token: 'tok-123' }]));
    await waitFor(() => expect($('#join-result').textContent).toContain('https://new.example.org'));
  });

  it('sends no token when the field is empty and shows a pool error', async () => {
    const calls: [string, unknown][] = [];
    mockIPC((cmd, args) => {
      calls.push([cmd, args]);
      if (cmd === 'pools') return [];
      if (cmd === 'pool_join') throw { code: 'pool', message: 'cannot reach http://127.0.0.1:1: connection refused' };
    });
    render(Pools);
    await fireEvent.input($('#join-url'), { target: { value: 'http://127.0.0.1:1' } });
    await fireEvent.click($('#join'));
    await waitFor(() => expect($('#join-result').textContent?.trim()).toBe('cannot reach http://127.0.0.1:1: connection refused'));
    expect(calls).toContainEqual(['pool_join', { url: 'http://127.0.0.1:1', token: null }]);
  });

  it('starts the demo pool', async () => {
    mockIPC((cmd) => {
      if (cmd === 'pools') return [];
      if (cmd === 'demo_start') return { url: 'http://127.0.0.1:40000' };
    });
    render(Pools);
    await fireEvent.click($('#try-demo'));
    await waitFor(() => expect($('#demo-result').textContent).toContain('http://127.0.0.1:40000'));
  });
});
