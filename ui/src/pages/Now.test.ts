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

  it('pauses and resumes the GPU alone, and shows that pause', async () => {
    const calls: [string, unknown][] = [];
    let gpuPaused = false;
    const none = { kind: 'none' } as const;
    const gpu = () => (gpuPaused ? ({ kind: 'until_resumed' } as const) : none);
    mockIPC((cmd, args) => {
      calls.push([cmd, args]);
      if (cmd === 'status') {
        return status({
          pauses: { cpu: none, gpu: gpu() },
          reasons: gpuPaused ? [{ code: 'paused_by_user', text: 'GPU work paused by you until you resume', scope: 'gpu' }] : [],
        });
      }
      if (cmd === 'pause') {
        gpuPaused = true;
        return { manual_pause: none, pauses: { cpu: none, gpu: gpu() } };
      }
      if (cmd === 'resume') {
        gpuPaused = false;
        return { manual_pause: none, pauses: { cpu: none, gpu: none } };
      }
      return undefined;
    });
    render(Now);
    await waitFor(() => expect($('#pause-gpu')).toBeTruthy());
    await fireEvent.click($('#pause-gpu'));
    await waitFor(() => expect(calls).toContainEqual(['pause', { duration: 'indefinitely', only: 'gpu' }]));
    await waitFor(() => expect($('#control-message').textContent).toBe('GPU work paused by you until you resume'));
    await waitFor(() => expect($('#resume-gpu')).toBeTruthy());
    expect(document.querySelector('.kind-pause')?.textContent).toBe('GPU work paused by you until you resume');
    expect($('#pause-cpu')).toBeTruthy();
    await fireEvent.click($('#resume-gpu'));
    await waitFor(() => expect(calls).toContainEqual(['resume', { only: 'gpu' }]));
    await waitFor(() => expect($('#pause-gpu')).toBeTruthy());
  });

  it('shows a manual pause, the next start and resumes', async () => {
    const until = Date.now() + 30 * 60_000;
    const paused = status({
      state: 'paused',
      paused: true,
      manual_pause: { kind: 'until', until_ms: until },
      reasons: [{ code: 'paused_by_user', text: 'paused by you until 14:30' }],
      decision: { action: { action: 'pause' }, reasons: [], traffic: 'all' },
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
    await emit(
      'status',
      status({
        state: 'connecting',
        pool_problem: 'cannot join http://x: pool unreachable at http://x: connection refused',
        pool_problem_code: 'unreachable',
        pool_retry_at_ms: Date.now() + 12_000,
      }),
    );
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Connecting to the pool'));
    expect($('#pool-problem .note-title').textContent).toBe('Cannot reach the pool');
    expect($('#pool-problem-text').textContent).toMatch(/tries again in 1[12] s/);
    // The agent's own sentence only under Details.
    expect($('#pool-problem details').textContent).toContain('connection refused');
  });

  it('says "No pool yet" in words, with buttons instead of a command line', async () => {
    mockIPC((cmd) => {
      if (cmd === 'status')
        return status({
          state: 'no_pool',
          scheduler: null,
          pool_problem: 'no pool configured: set one with `idlemesh settings set pool_url URL`',
          pool_problem_code: 'no_pool',
        });
      if (cmd === 'app_info') return { ...appInfo, first_run: false };
    });
    render(Now);
    await waitFor(() => expect($('#pool-problem .note-title').textContent).toBe('No pool yet'));
    const page = $('#page-now').textContent ?? '';
    expect(page).not.toContain('idlemesh settings');
    expect(page).not.toContain('`');
    expect($('#fix-join_pool').textContent).toBe('Join a pool…');
    expect($('#fix-demo').textContent).toBe('Try the demo pool');
    await fireEvent.click($('#fix-join_pool'));
    expect(location.hash).toBe('#/pools');
  });

  it('explains an agent that could not start, and tries again', async () => {
    let failed = true;
    const retry = vi.fn(() => {
      failed = false;
      return { restarted: true };
    });
    mockIPC((cmd) => {
      if (cmd === 'status')
        return failed
          ? {
              state: 'error',
              error: 'the keyring refused: SS error: result not returned from SS API',
              error_code: 'keyring_refused',
              reasons: [],
            }
          : status();
      if (cmd === 'agent_retry') return retry();
    });
    render(Now);
    await waitFor(() => expect($('#agent-problem .note-title').textContent).toBe('Your keyring is locked'));
    expect($('#agent-problem-text').textContent).toContain('login keyring');
    expect(document.querySelector('#state')).toBeNull();
    await fireEvent.click($('#fix-retry'));
    expect(retry).toHaveBeenCalledOnce();
    await waitFor(() => expect($('#state').textContent?.trim()).toBe('Working for the pool'));
    expect(document.querySelector('#agent-problem')).toBeNull();
  });

  it('offers to reset settings that cannot be read', async () => {
    const reset = vi.fn(() => ({ kept: '/home/u/.config/idlemesh/settings.toml.unreadable-20261205-101010' }));
    mockIPC((cmd) => {
      if (cmd === 'status') return status({ settings_errors: ['settings file /x: TOML parse error at line 1'] });
      if (cmd === 'settings_reset') return reset();
    });
    render(Now);
    await waitFor(() => expect($('#settings-errors .note-title').textContent).toBe('Your settings could not be read'));
    await fireEvent.click($('#fix-reset_settings'));
    await waitFor(() => expect($('#settings-fix-result').textContent).toContain('unreadable-20261205'));
    expect(reset).toHaveBeenCalledOnce();
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
    // Work waits for the user to be away; "Start now" lends the machine at once.
    expect($('#first-run-when').textContent).toContain('away from the keyboard for 3 minutes');
    expect(document.querySelector('#first-run-dismiss')).toBeNull();
  });

  it('starts the demo now when asked', async () => {
    const lend = vi.fn(() => ({ pool: 'http://127.0.0.1:40000' }));
    mockIPC((cmd) => {
      if (cmd === 'status') return status({ state: 'paused', scheduler: null });
      if (cmd === 'app_info') return { ...appInfo, first_run: true };
      if (cmd === 'demo_start') return { url: 'http://127.0.0.1:40000' };
      if (cmd === 'demo_start_now') return lend();
    });
    render(Now);
    await waitFor(() => expect(document.querySelector('#first-run')).not.toBeNull());
    await fireEvent.click($('#first-run-demo'));
    await waitFor(() => expect(document.querySelector('#first-run-start-now')).not.toBeNull());
    await fireEvent.click($('#first-run-start-now'));
    await waitFor(() => expect($('#first-run-start-result').textContent).toContain('works for the demo pool now'));
    expect(lend).toHaveBeenCalledOnce();
  });

  it('remembers "Not now"', async () => {
    const dismissed = vi.fn(() => ({ first_run: false }));
    mockIPC((cmd) => {
      if (cmd === 'status') return status({ state: 'no_pool', scheduler: null });
      if (cmd === 'app_info') return { ...appInfo, first_run: true };
      if (cmd === 'first_run_dismiss') return dismissed();
    });
    render(Now);
    await waitFor(() => expect(document.querySelector('#first-run')).not.toBeNull());
    await fireEvent.click($('#first-run-dismiss'));
    await waitFor(() => expect(document.querySelector('#first-run')).toBeNull());
    expect(dismissed).toHaveBeenCalledOnce();
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
