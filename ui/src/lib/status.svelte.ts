// The agent's status, shared by the pages that show it: fetched with
// `status` when the first page needs it and every second after that, and
// updated by the `status` event in between.

import { onMount } from 'svelte';
import { api, onStatus, toApiError, type ApiError, type Status } from './api';

const POLL_MS = 1000;

class StatusFeed {
  status = $state<Status | null>(null);
  error = $state<ApiError | null>(null);
  /** local time of the last status received (drives "time so far") */
  now = $state(Date.now());
  #users = 0;
  #timer: ReturnType<typeof setInterval> | null = null;
  #unlisten: (() => void) | null = null;
  #generation = 0;

  apply(s: Status): void {
    this.status = s;
    this.error = null;
    this.now = Date.now();
  }

  async refresh(): Promise<void> {
    const gen = this.#generation;
    try {
      const s = await api.status();
      if (gen === this.#generation) this.apply(s);
    } catch (e) {
      if (gen !== this.#generation) return;
      const err = toApiError(e);
      this.error = err;
      this.now = Date.now();
      // A stopped agent's last status would mislead ("Working for the pool").
      if (err.code === 'not_running' || err.code === 'no_shell') this.status = null;
    }
  }

  start(): void {
    if (this.#users++ > 0) return;
    void this.refresh();
    this.#timer = setInterval(() => void this.refresh(), POLL_MS);
    const gen = this.#generation;
    onStatus((s) => this.apply(s))
      .then((unlisten) => {
        if (this.#users === 0 || gen !== this.#generation) unlisten();
        else this.#unlisten = unlisten;
      })
      .catch(() => {
        // the polling above still keeps the page current
      });
  }

  stop(): void {
    if (this.#users === 0 || --this.#users > 0) return;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const unlisten = this.#unlisten;
    this.#unlisten = null;
    try {
      unlisten?.();
    } catch {
      // the window is going away
    }
  }

  /** Forgets everything (tests). */
  reset(): void {
    while (this.#users > 0) this.stop();
    this.#generation++;
    this.status = null;
    this.error = null;
  }
}

export const feed = new StatusFeed();

/** In a component: keeps the shared status fresh while the component is mounted. */
export function useStatus(): StatusFeed {
  onMount(() => {
    feed.start();
    return () => feed.stop();
  });
  return feed;
}
