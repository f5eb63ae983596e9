import { describe, expect, it } from 'vitest';
import { fireEvent, render, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import Limits from './Limits.svelte';
import { appInfo, schema, settings, status } from '../test/fixtures';

function $<T extends HTMLElement = HTMLElement>(sel: string): T {
  const el = document.querySelector<T>(sel);
  if (!el) throw new Error(`no ${sel}`);
  return el;
}

describe('Limits page', () => {
  it('lists every setting in the documented order', async () => {
    mockIPC((cmd) =>
      cmd === 'status' ? status() : cmd === 'settings_schema' ? schema : cmd === 'app_info' ? appInfo : undefined,
    );
    render(Limits);
    await waitFor(() => expect(document.querySelector('#setting-cpu_cores')).not.toBeNull());
    const order = [...document.querySelectorAll<HTMLFormElement>('form.setting')].map((f) => f.dataset.key);
    expect(order).toEqual([
      'pool_url',
      'idle_minutes',
      'cpu_cores',
      'cpu_duty_cycle_percent',
      'gpu_enabled',
      'run_on_battery',
      'min_battery_percent',
      'max_cpu_temp_c',
      'allowed_hours',
      'memory_per_task_mb',
      'daily_upload_cap_mb',
      'daily_download_cap_mb',
      'pause_on_metered_network',
      'max_other_cpu_percent',
    ]);
    expect($<HTMLInputElement>('#setting-gpu_enabled').type).toBe('checkbox');
    expect($<HTMLInputElement>('#setting-cpu_cores').type).toBe('number');
    // The range, default and help are the agent's.
    await waitFor(() => expect($<HTMLInputElement>('#setting-cpu_cores').max).toBe('1024'));
    expect($('#accepts-cpu_cores').textContent).toBe('From 1 to 1024, default 1.');
    expect($('#help-cpu_cores').textContent).toBe(schema.find((s) => s.key === 'cpu_cores')!.help);
    expect($('#setting-cpu_cores').getAttribute('aria-describedby')).toContain('accepts-cpu_cores');
    expect($<HTMLInputElement>('#setting-allowed_hours').value).toBe('always');
    expect(document.querySelector('label[for="setting-cpu_cores"]')).not.toBeNull();
    expect($('#source-pool_url').textContent).toContain('your setting');
    expect($('#source-cpu_cores').textContent).toContain('default');
    await waitFor(() => expect($<HTMLInputElement>('#autostart').disabled).toBe(false));
  });

  it('shows a locked setting as disabled and managed by your organisation', async () => {
    const s = status({ settings: settings({ cpu_cores: { value: 2, source: 'policy', locked: true } }) });
    mockIPC((cmd) => (cmd === 'status' ? s : cmd === 'settings_schema' ? schema : undefined));
    render(Limits);
    await waitFor(() => expect(document.querySelector('#setting-cpu_cores')).not.toBeNull());
    expect($<HTMLInputElement>('#setting-cpu_cores').disabled).toBe(true);
    expect($<HTMLButtonElement>('#save-cpu_cores').disabled).toBe(true);
    const row = $('#setting-cpu_cores').closest('form')!;
    const locked = row.querySelector('.locked');
    expect(locked?.textContent).toBe('managed by your organisation');
    expect(document.querySelectorAll('.locked')).toHaveLength(1);
    expect($<HTMLInputElement>('#setting-idle_minutes').disabled).toBe(false);
  });

  it("shows the agent's error message when settings_set rejects", async () => {
    const message = 'settings.toml: `cpu_duty_cycle_percent` = 7: the agent refused this value';
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'status') return status();
      if (cmd === 'settings_schema') return schema;
      if (cmd === 'settings_set') {
        calls.push(args);
        throw { code: 'bad_value', message };
      }
    });
    render(Limits);
    await waitFor(() => expect(document.querySelector('#setting-cpu_duty_cycle_percent')).not.toBeNull());
    await fireEvent.input($('#setting-cpu_duty_cycle_percent'), { target: { value: '7' } });
    await fireEvent.click($('#save-cpu_duty_cycle_percent'));
    await waitFor(() => expect($('#message-cpu_duty_cycle_percent').textContent).toBe(message));
    expect(calls).toEqual([{ key: 'cpu_duty_cycle_percent', value: '7' }]);
  });

  it("says Saved on success, and leaves the range to the agent", async () => {
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'status') return status();
      if (cmd === 'settings_schema') return schema;
      if (cmd === 'settings_set') {
        calls.push(args);
        return { key: 'cpu_cores', effective: { value: 2, source: 'user', locked: false } };
      }
    });
    render(Limits);
    await waitFor(() => expect(document.querySelector('#setting-cpu_cores')).not.toBeNull());
    await fireEvent.input($('#setting-cpu_cores'), { target: { value: '2' } });
    await fireEvent.click($('#save-cpu_cores'));
    await waitFor(() => expect($('#message-cpu_cores').textContent).toBe('Saved'));
    expect(calls).toEqual([{ key: 'cpu_cores', value: '2' }]);
    expect($('#source-cpu_cores').textContent).toContain('your setting');
  });

  it('sends a checkbox as true or false', async () => {
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'status') return status();
      if (cmd === 'settings_schema') return schema;
      if (cmd === 'settings_set') {
        calls.push(args);
        return { key: 'gpu_enabled', effective: { value: true, source: 'user', locked: false } };
      }
    });
    render(Limits);
    await waitFor(() => expect(document.querySelector('#setting-gpu_enabled')).not.toBeNull());
    await fireEvent.click($('#setting-gpu_enabled'));
    await waitFor(() => expect($('#message-gpu_enabled').textContent).toBe('Saved'));
    expect(calls).toEqual([{ key: 'gpu_enabled', value: 'true' }]);
  });

  it('turns start at login on', async () => {
    const calls: unknown[] = [];
    mockIPC((cmd, args) => {
      if (cmd === 'status') return status();
      if (cmd === 'settings_schema') return schema;
      if (cmd === 'app_info') return appInfo;
      if (cmd === 'autostart_set') {
        calls.push(args);
        return { autostart: true };
      }
    });
    render(Limits);
    await waitFor(() => expect($<HTMLInputElement>('#autostart').disabled).toBe(false));
    await fireEvent.click($('#autostart'));
    await waitFor(() => expect($('#autostart-message').textContent).toContain('will start when you log in'));
    expect(calls).toEqual([{ enabled: true }]);
    expect($<HTMLInputElement>('#autostart').checked).toBe(true);
  });
});
