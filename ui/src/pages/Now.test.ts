import { describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import { emit } from '@tauri-apps/api/event';
import Now from './Now.svelte';
import { appInfo, status } from '../test/fixtures';

function $(sel: string): HTMLElement {
  const el = document.querySelector<HTMLElement>(sel);
  if (!el) throw new Error(`no ${sel}`);
  return el;
}

describe('Now page', () => {
  it('shows the state in words and every reason verbatim', async () => {
    const s = status();
    mockIPC((cmd) => (cmd === 'status' ? s : cmd === 'app_info' ? appInfo : undefined), { shouldMockEvents: true });
    render(Now);
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Working for the pool'));
    const items = [...document.querySelectorAll('#reasons > li')].map((li) => li.textContent);
    expect(items).toEqual(s.reasons.map((r) => r.text));
    expect($('#current-task').textContent).toContain('job 1, task 3');
    expect($('#current-task').textContent).toContain('8abcdef01234…');
    expect($('#current-task').textContent).toMatch(/1 min 0[5-9] s/);
    expect($('#current-task .progress').textContent).toContain('42 %');
    expect(($('#current-task progress') as HTMLProgressElement).value).toBeCloseTo(0.425);
    expect($('#cores').textContent).toContain('1 core, 60 % of the time');
  });

  it('calls pause with 15m when "Pause 15 minutes" is clicked', async () => {
    const calls: [string, unknown][] = [];
    mockIPC((cmd, args) => {
      calls.push([cmd, args]);
      if (cmd === 'status') return status();
      if (cmd === 'app_info') return appInfo;
      if (cmd === 'pause') return { manual_pause: { kind: 'until', until_ms: Date.now() + 15 * 60_000 } };
    });
    render(Now);
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Working for the pool'));
    await fireEvent.click($('#pause-15m'));
    await waitFor(() => expect(calls).toContainEqual(['pause', { duration: '15m' }]));
    await waitFor(() => expect($('#control-message').textContent).toMatch(/^Paused by you until /));
  });

  it('shows a manual pause, the next start and resumes', async () => {
    const until = Date.now() + 30 * 60_000;
    const paused = status({
      state: 'paused',
      paused: true,
      manual_pause: { kind: 'until', until_ms: until },
      reasons: [{ code: 'paused_by_user', text: 'paused by you until 14:30' }],
      decision: { action: { action: 'pause' }, reasons: [] },
      scheduler: { ...status().scheduler!, current_task: null },
    });
    const resume = vi.fn(() => ({ manual_pause: { kind: 'none' } }));
    mockIPC((cmd) => (cmd === 'status' ? paused : cmd === 'resume' ? resume() : undefined));
    render(Now);
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Paused'));
    expect($('#manual-pause').textContent).toMatch(/^Paused by you until (tomorrow )?\d\d:\d\d$/);
    expect($('#next-start').textContent).toContain('when your pause ends');
    expect($('#current-task').textContent).toContain('No task right now');
    expect($('#cores').textContent).toContain('none (paused)');
    await fireEvent.click($('#resume'));
    await waitFor(() => expect(resume).toHaveBeenCalledOnce());
  });

  it('follows the status event', async () => {
    mockIPC((cmd) => (cmd === 'status' ? status() : undefined), { shouldMockEvents: true });
    render(Now);
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Working for the pool'));
    await emit('status', status({ state: 'connecting', pool_problem: 'cannot join http://x: refused' }));
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Connecting to the pool'));
    expect($('#pool-problem').textContent).toContain('cannot join http://x: refused');
  });

  it('says when a kernel does not report progress', async () => {
    const base = status();
    const task = { ...base.scheduler!.current_task!, progress: null };
    mockIPC((cmd) => (cmd === 'status' ? status({ scheduler: { ...base.scheduler!, current_task: task } }) : undefined));
    render(Now);
    await waitFor(() => expect($('#current-task .progress').textContent).toContain('not reported by this kernel'));
    expect(document.querySelector('#current-task progress')).toBeNull();
  });

  it('names the organisation that manages this device', async () => {
    const base = status();
    mockIPC((cmd) =>
      cmd === 'status' ? status({ scheduler: { ...base.scheduler!, managed_by: 'Acme Research' } }) : undefined,
    );
    render(Now);
    await waitFor(() => expect($('#managed-by').textContent).toBe('Acme Research'));
    expect($('#session').textContent).toContain('Managed by');
  });

  it('says so clearly when the agent is not running', async () => {
    mockIPC((cmd) => {
      if (cmd === 'status') throw { code: 'not_running', message: 'the agent has not started yet' };
    });
    render(Now);
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('The agent is not running'));
    expect(screen.getByRole('alert').textContent).toContain('the agent has not started yet');
  });

  it('offers the demo pool on first run', async () => {
    const started = vi.fn(() => ({ url: 'http://127.0.0.1:40000' }));
    mockIPC((cmd) => {
      if (cmd === 'status') return status({ state: 'no_pool', scheduler: null });
      if (cmd === 'app_info') return { ...appInfo, first_run: true };
      if (cmd === 'demo_start') return started();
    });
    render(Now);
    await waitFor(() => expect(document.querySelector('#first-run')).not.toBeNull());
    await fireEvent.click($('#first-run-demo'));
    await waitFor(() => expect($('#first-run-result').textContent).toContain('http://127.0.0.1:40000'));
    expect(started).toHaveBeenCalledOnce();
  });

  it('asks on first run whether to start at login', async () => {
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'status') return status({ state: 'no_pool', scheduler: null });
      if (cmd === 'app_info') return { ...appInfo, first_run: true, autostart: false };
      if (cmd === 'autostart_set') {
        calls.push(args);
        return { autostart: (args as { enabled: boolean }).enabled };
      }
    });
    render(Now);
    await waitFor(() => expect(document.querySelector('#first-run-autostart')).not.toBeNull());
    const box = $('#first-run-autostart') as HTMLInputElement;
    expect(box.checked).toBe(false);
    await fireEvent.click(box);
    await waitFor(() => expect($('#first-run-autostart-message').textContent).toContain('will start when you log in'));
    expect(calls).toEqual([{ enabled: true }]);
    expect(box.checked).toBe(true);
  });

  it('shows why starting at login could not be set', async () => {
    mockIPC((cmd) => {
      if (cmd === 'status') return status({ state: 'no_pool', scheduler: null });
      if (cmd === 'app_info') return { ...appInfo, first_run: true, autostart: false };
      if (cmd === 'autostart_set') throw { code: 'io', message: 'cannot write ~/.config/autostart: read-only' };
    });
    render(Now);
    await waitFor(() => expect(document.querySelector('#first-run-autostart')).not.toBeNull());
    await fireEvent.click($('#first-run-autostart'));
    await waitFor(() => expect($('#first-run-autostart-message').textContent).toContain('read-only'));
    expect(($('#first-run-autostart') as HTMLInputElement).checked).toBe(false);
  });
});
