// A hash router small enough to read at a glance: `#/limits` shows Limits;
// anything else (including no hash) shows Now.

export const PAGE_IDS = ['now', 'limits', 'stats', 'ledger', 'privacy', 'pools'] as const;
export type PageId = (typeof PAGE_IDS)[number];

export function pageFromHash(hash: string): PageId {
  const id = hash.replace(/^#\/?/, '').split(/[/?]/)[0];
  return (PAGE_IDS as readonly string[]).includes(id) ? (id as PageId) : 'now';
}
