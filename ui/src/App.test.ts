import { describe, expect, it } from 'vitest';
import { fireEvent, render, waitFor } from '@testing-library/svelte';
import { mockIPC } from '@tauri-apps/api/mocks';
import App from './App.svelte';
import { appInfo, status } from './test/fixtures';
import { pageFromHash } from './lib/router';

describe('App', () => {
  it('opens on Now and switches pages from the nav', async () => {
    history.replaceState(null, '', '#');
    mockIPC((cmd) => {
      if (cmd === 'status') return status();
      if (cmd === 'app_info') return appInfo;
      if (cmd === 'pools') return [];
    });
    render(App);
    expect(document.querySelector('#page-now')).not.toBeNull();
    expect(document.querySelector('#nav-now')?.getAttribute('aria-current')).toBe('page');
    for (const id of ['now', 'limits', 'stats', 'ledger', 'privacy', 'pools']) {
      expect(document.querySelector(`#nav-${id}`)).not.toBeNull();
    }
    await fireEvent.click(document.querySelector('#nav-pools')!);
    await waitFor(() => expect(document.querySelector('#page-pools')).not.toBeNull());
    expect(document.querySelector('#page-now')).toBeNull();
    expect(location.hash).toBe('#/pools');
    expect(document.activeElement?.id).toBe('pools-page-title');
  });

  it('routes from the hash', () => {
    expect(pageFromHash('')).toBe('now');
    expect(pageFromHash('#/ledger')).toBe('ledger');
    expect(pageFromHash('#privacy')).toBe('privacy');
    expect(pageFromHash('#/nope')).toBe('now');
  });
});
