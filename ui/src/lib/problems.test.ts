import { describe, expect, it } from 'vitest';
import { agentProblem, poolProblem, reasonWords } from './problems';
import { status } from '../test/fixtures';
import type { PoolProblemCode, StartProblem } from './api';

// A command line or a config key in the words would send a non-technical
// person to a terminal: the words never have one (the details may).
const TECHNICAL = /`|idlemesh (settings|agent|pool)|pool_url|allow_|IDLEMESH_|\.toml/;

describe('problems in words', () => {
  it.each([
    'keyring_refused',
    'no_keyring',
    'keyring_damaged',
    'keyring_setting',
    'already_running',
    'socket_not_private',
    'data_dir',
    'not_running',
    'control_socket',
    'other',
    'something_new',
  ])('the agent not starting (%s) is explained, with Try again', (code) => {
    const p = agentProblem({ ...status(), state: 'error', error: 'raw `cause`', error_code: code as StartProblem, data_dir: '/d' })!;
    expect(p.title).not.toMatch(TECHNICAL);
    expect(p.text).not.toMatch(TECHNICAL);
    expect(p.fixes).toContain('retry');
    expect(p.details).toBe('raw `cause`');
  });

  it('says where the key would be kept when the keyring refuses', () => {
    const p = agentProblem({ ...status(), state: 'error', error_code: 'keyring_refused' })!;
    expect(p.text).toContain('login keyring');
    expect(p.text).toContain('“idlemesh”');
  });

  it('names the folder that cannot be written', () => {
    const p = agentProblem({ ...status(), state: 'error', error_code: 'data_dir', data_dir: '/home/u/.local/share/idlemesh' })!;
    expect(p.text).toContain('/home/u/.local/share/idlemesh');
  });

  it('says the agent is not running, and that this window connects when it does', () => {
    const p = agentProblem({ ...status(), state: 'error', error_code: 'not_running' })!;
    expect(p.title).toBe('Idlemesh is not running');
    expect(p.text).toContain('connects as soon as it runs');
  });

  it('is nothing while the agent runs', () => {
    expect(agentProblem(status())).toBeNull();
    expect(poolProblem(status(), Date.now())).toBeNull();
  });

  it.each([
    ['no_pool', 'No pool yet', ['join_pool', 'demo']],
    ['unreachable', 'Cannot reach the pool', []],
    ['refused', 'The pool did not let this computer join', ['join_pool']],
    ['pool_key_changed', 'The pool’s identity changed', ['join_pool']],
    ['insecure_pool', 'The pool’s address is not secure', ['join_pool']],
    ['policy_unreadable', 'Your organisation’s settings cannot be read', []],
    ['metered', 'Waiting for a suitable network', ['limits']],
    ['cannot_join', 'Cannot join the pool', []],
  ])('a pool problem (%s) reads "%s"', (code, title, fixes) => {
    const p = poolProblem(
      { ...status(), pool_problem: 'cannot join `x`: set pool_url', pool_problem_code: code as PoolProblemCode },
      Date.now(),
    )!;
    expect(p.title).toBe(title);
    expect(p.fixes).toEqual(fixes);
    expect(p.text).not.toMatch(TECHNICAL);
  });

  it('says when the agent tries again, and what the pool said', () => {
    const now = Date.now();
    const p = poolProblem(
      {
        ...status(),
        pool_problem: 'x',
        pool_problem_code: 'refused',
        pool_retry_at_ms: now + 90_000,
        pool_said: 'this pool needs an enrollment token',
      },
      now,
    )!;
    expect(p.text).toContain('“this pool needs an enrollment token”');
    expect(p.text).toContain('again in 1 min 30 s');
  });
});

describe('reasons in words', () => {
  it.each([
    ['presence_unknown', 'cannot tell whether you are using this machine (DISPLAY=:0 is set, but no idle sensor answers)'],
    ['sandbox_missing', 'the worker sandbox lacks netns (user namespaces are off), which require_sandbox asks for'],
    ['policy_unreadable', 'IT policy unreadable: /etc/idlemesh/policy.toml: TOML parse error at line 1'],
  ])('%s is said plainly', (code, text) => {
    const words = reasonWords({ code, text } as never);
    expect(words).not.toBe(text);
    expect(words).not.toMatch(TECHNICAL);
    expect(words).not.toMatch(/netns|DISPLAY|require_sandbox/);
  });

  it('keeps the agent’s words where they are plain already', () => {
    expect(reasonWords({ code: 'user_active', text: 'user active 18 s ago; work starts after 3 min idle' } as never)).toBe(
      'user active 18 s ago; work starts after 3 min idle',
    );
  });
});
