// What stands between the user and lending their computer, in words a
// non-technical person understands, each with the button that fixes it
// where one can. The agent's own sentences (written for `idlemesh status`,
// with command lines) stay behind "Details".

import type { Reason, Status } from './api';
import { formatDuration, formatWhen } from './format';

/** A button a problem offers; the page knows what each does. */
export type Fix =
  | 'retry' // start the agent again
  | 'join_pool' // the Pools page, to join one by address
  | 'demo' // start and join the demo pool
  | 'limits' // the Limits page
  | 'reset_settings'; // move the unreadable settings file aside

export interface Problem {
  /** stable, for tests and styling */
  code: string;
  title: string;
  text: string;
  fixes: Fix[];
  /** the agent's exact words, shown folded */
  details: string | null;
}

const KEY_PLACE =
  "Idlemesh keeps this computer's identity key in your login keyring (GNOME Keyring, KDE Wallet or another Secret Service), under the name “idlemesh”.";

/** Why the embedded agent is not running (status `state: "error"`). */
export function agentProblem(s: Status | null): Problem | null {
  if (!s || s.state !== 'error') return null;
  const details = s.error ?? null;
  const p = (title: string, text: string, fixes: Fix[] = ['retry']): Problem => ({
    code: s.error_code ?? 'other',
    title,
    text,
    fixes,
    details,
  });
  switch (s.error_code) {
    case 'keyring_refused':
      return p(
        'Your keyring is locked',
        `${KEY_PLACE} The keyring did not let Idlemesh read or store it, which usually means it is locked. Unlock it (open “Passwords and Keys”, or log out and in again), then try again.`,
      );
    case 'no_keyring':
      return p(
        'No keyring to keep this computer’s key',
        `${KEY_PLACE} No keyring answered in this session, so Idlemesh cannot keep that key safe and does not start. Start your desktop’s keyring (or install GNOME Keyring), then try again.`,
      );
    case 'keyring_damaged':
      return p(
        'This computer’s key in your keyring is damaged',
        `${KEY_PLACE} That entry cannot be read as a key. Remove the “idlemesh” entry in “Passwords and Keys”, then try again: Idlemesh makes a new key and joins as a new device.`,
      );
    case 'keyring_setting':
      return p(
        'Idlemesh was started with an unknown keyring choice',
        'Start Idlemesh from your applications menu, or log out and in again, so it uses your desktop’s keyring.',
      );
    case 'already_running':
      return p(
        'Idlemesh is already running',
        'Another copy of Idlemesh is already lending this computer. Close it (its icon in the tray, or the other window), then try again.',
      );
    case 'socket_not_private':
      return p(
        'Idlemesh’s private folder belongs to someone else',
        'Idlemesh talks to its own parts through a folder only you should be able to use, and that folder belongs to another account: someone could listen in, so Idlemesh does not start. Restarting the computer clears it; if this comes back, tell whoever looks after this computer.',
      );
    case 'not_running':
      // The dashboard runs in its own process and nothing answers it.
      return p(
        'Idlemesh is not running',
        'This window shows what Idlemesh does, but Idlemesh itself is not running, so nothing is lent. Start it (Try again does), or start Idlemesh from your applications menu: this window connects as soon as it runs.',
      );
    case 'control_socket':
      return p(
        'This window cannot reach Idlemesh',
        'Idlemesh talks to this window through a private folder it could not use. Try again; restarting the computer clears it. If this comes back, the details below help whoever looks after this computer.',
      );
    case 'data_dir':
      return p(
        'Idlemesh cannot save its data',
        `Idlemesh keeps its ledger of your work in ${s.data_dir ? `the folder ${s.data_dir}` : 'its data folder'}, and cannot write there: the disk may be full or read-only, or the folder’s permissions changed. Free some space or give the folder back to your account, then try again.`,
      );
    default:
      return p(
        'Idlemesh could not start',
        'Try again. If it keeps failing, the details below help whoever looks after this computer.',
      );
  }
}

function host(url: string | null | undefined): string {
  if (!url) return 'the pool';
  try {
    return new URL(url).host || url;
  } catch {
    return url;
  }
}

/** When the next attempt is due, in words: "in 12 s" / "at 14:30". */
function retryWords(atMs: number | null | undefined, nowMs: number): string {
  if (atMs == null) return 'again shortly';
  const wait = atMs - nowMs;
  if (wait <= 1000) return 'again now';
  if (wait < 60 * 60 * 1000) return `again in ${formatDuration(wait)}`;
  return `again ${formatWhen(atMs, nowMs)}`;
}

/** Why there is no connection to a pool (`pool_problem_code`). */
export function poolProblem(s: Status | null, nowMs: number): Problem | null {
  if (!s?.pool_problem && !s?.pool_problem_code) return null;
  const details = s.pool_problem ?? null;
  const pool = host(s.settings?.pool_url?.value as string | null);
  const p = (code: string, title: string, text: string, fixes: Fix[] = []): Problem => ({
    code,
    title,
    text,
    fixes,
    details,
  });
  switch (s.pool_problem_code) {
    case 'no_pool':
      // The agent's sentence names a command line: not shown here at all.
      return {
        ...p(
          'no_pool',
          'No pool yet',
          'Idlemesh lends this computer’s idle time to a pool: a project or organisation that sends it work. Join one with the address its organisers gave you, or try the demo pool, which runs on this computer only.',
          ['join_pool', 'demo'],
        ),
        details: null,
      };
    case 'unreachable':
      return p(
        'unreachable',
        'Cannot reach the pool',
        `${pool} does not answer. Idlemesh tries ${retryWords(s.pool_retry_at_ms, nowMs)}; nothing is lost meanwhile. Check that this computer is online.`,
      );
    case 'refused':
      return p(
        'refused',
        'The pool did not let this computer join',
        `${pool} refused${s.pool_said ? `, saying: “${s.pool_said}”` : ''}. If it needs an invitation (an enrolment token), ask whoever runs it for one and join again from Pools. Idlemesh asks ${retryWords(s.pool_retry_at_ms, nowMs)}.`,
        ['join_pool'],
      );
    case 'pool_key_changed':
      return p(
        'pool_key_changed',
        'The pool’s identity changed',
        `${pool} now proves its identity with a different key than before. It may be another server pretending to be the pool, so Idlemesh stopped working for it. If the pool’s organisers say they replaced their key, leave the pool and join it again from Pools.`,
        ['join_pool'],
      );
    case 'insecure_pool':
      return p(
        'insecure_pool',
        'The pool’s address is not secure',
        `${pool} is an http:// address on another computer: anyone on the way could read or change the work. Ask the pool for its https:// address and join that from Pools.`,
        ['join_pool'],
      );
    case 'policy_unreadable':
      return p(
        'policy_unreadable',
        'Your organisation’s settings cannot be read',
        'Whoever manages this computer set rules for Idlemesh, and they cannot be read, so Idlemesh lends nothing until they are fixed. Tell your IT department.',
      );
    case 'metered':
      return p(
        'metered',
        'Waiting for a suitable network',
        'This network is metered, or today’s transfer allowance is used up, so Idlemesh waits before joining the pool. Metered networks can be allowed under Limits.',
        ['limits'],
      );
    default:
      return p(
        s.pool_problem_code ?? 'cannot_join',
        'Cannot join the pool',
        `Idlemesh could not join ${pool} and tries ${retryWords(s.pool_retry_at_ms, nowMs)}.`,
      );
  }
}

/** Reasons whose agent text is for whoever manages the machine (it names
 *  sensors, sandbox layers, files): the dashboard says them plainly, with
 *  the agent's text kept as the item's tooltip. */
const REASON_WORDS: Record<string, string> = {
  presence_unknown:
    'Idlemesh cannot tell whether you are using this computer (it cannot see keyboard and mouse activity here), so it lends nothing rather than risk slowing you down.',
  sandbox_missing:
    'Tasks must be walled off from your files and network more strictly than this computer allows (a rule set for Idlemesh here), so nothing runs.',
  policy_unreadable:
    'Your organisation’s settings for Idlemesh cannot be read, so nothing runs until they are fixed. Tell your IT department.',
};

/** A governor reason in words for the dashboard. */
export function reasonWords(r: Reason): string {
  return REASON_WORDS[r.code] ?? r.text;
}
