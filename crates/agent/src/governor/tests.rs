//! Table-driven: every limit of DESIGN §6, their combinations, and the
//! hysteresis of every threshold that could flap.

use std::time::Duration;

use super::*;
use ReasonCode::*;
use idlemesh_runtime::SandboxReport;

const MIN: u64 = 60_000;
/// 2026-11-22 13:00 UTC.
const T0: u64 = 1_795_352_400_000;

fn snap() -> Snapshot {
    Snapshot {
        at_ms: T0,
        local_minute_of_day: 13 * 60,
        utc_offset_minutes: 60,
        user_idle: Some(Duration::from_secs(600)),
        other_cpu_percent: Some(5.0),
        battery: None,
        cpu_temp_c: Some(50.0),
        gpu_busy_percent: None,
        other_gpu_percent: None,
        gpu_found: None,
        fullscreen: None,
        exclusive_program: None,
        metered_network: Some(false),
        uploaded_today_bytes: 0,
        downloaded_today_bytes: 0,
        sandbox: None,
        graphical_session: None,
    }
}

/// A worker that has every layer but a network namespace.
fn sandbox_without_netns() -> Option<SandboxReport> {
    let mut report =
        SandboxReport { no_new_privs: true, landlock_abi: 7, landlock_net: true, seccomp: true, ..Default::default() };
    report.missing.insert(Layer::Netns, "user namespaces are off".into());
    Some(report)
}

fn limits() -> Limits {
    Limits::defaults(8, 16 << 30)
}

fn codes(d: &Decision) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}

type Tweak = fn(&mut Snapshot, &mut Limits);

#[test]
fn every_limit_alone_and_in_combination() {
    let table: &[(&str, Tweak, ManualPause, Option<&[ReasonCode]>)] = &[
        ("idle, mains, cool: runs", |_, _| {}, ManualPause::None, None),
        ("user active", |s, _| s.user_idle = Some(Duration::from_secs(3)), ManualPause::None, Some(&[UserActive])),
        (
            "idle just under the limit",
            |s, _| s.user_idle = Some(Duration::from_secs(179)),
            ManualPause::None,
            Some(&[UserActive]),
        ),
        ("idle exactly the limit", |s, _| s.user_idle = Some(Duration::from_secs(180)), ManualPause::None, None),
        (
            "custom idle limit",
            |s, l| {
                s.user_idle = Some(Duration::from_secs(30));
                l.idle_after = Duration::from_secs(20)
            },
            ManualPause::None,
            None,
        ),
        ("no idle sensor, headless", |s, _| s.user_idle = None, ManualPause::None, None),
        (
            "user active, but lent now (the demo's Start now)",
            |s, l| {
                s.user_idle = Some(Duration::from_secs(3));
                l.lend_now = true;
            },
            ManualPause::None,
            None,
        ),
        (
            "lent now: the user's pause still wins",
            |s, l| {
                s.user_idle = Some(Duration::from_secs(3));
                l.lend_now = true;
            },
            ManualPause::UntilResumed,
            Some(&[PausedByUser]),
        ),
        (
            "lent now: a low battery still pauses",
            |s, l| {
                s.user_idle = Some(Duration::from_secs(3));
                s.battery = Some(Battery { percent: 10.0, on_ac: true });
                l.lend_now = true;
            },
            ManualPause::None,
            Some(&[BatteryLow]),
        ),
        (
            "lent now, graphical session without a sensor: runs",
            |s, l| {
                s.user_idle = None;
                s.graphical_session = Some("DISPLAY=:0 is set, but no idle sensor answers".into());
                l.lend_now = true;
            },
            ManualPause::None,
            None,
        ),
        (
            "no idle sensor, graphical session: cannot tell",
            |s, _| {
                s.user_idle = None;
                s.graphical_session = Some("DISPLAY=:0 is set, but no idle sensor answers".into());
            },
            ManualPause::None,
            Some(&[PresenceUnknown]),
        ),
        (
            "idle sensor answers in a graphical session",
            |s, _| s.graphical_session = Some("DISPLAY=:0".into()),
            ManualPause::None,
            None,
        ),
        (
            "on battery, not allowed",
            |s, _| s.battery = Some(Battery { percent: 95.0, on_ac: false }),
            ManualPause::None,
            Some(&[OnBattery]),
        ),
        (
            "on battery, allowed, full",
            |s, l| {
                s.battery = Some(Battery { percent: 95.0, on_ac: false });
                l.run_on_battery = true
            },
            ManualPause::None,
            None,
        ),
        (
            "on battery, allowed, low",
            |s, l| {
                s.battery = Some(Battery { percent: 41.0, on_ac: false });
                l.run_on_battery = true
            },
            ManualPause::None,
            Some(&[BatteryLow]),
        ),
        (
            "on AC, charging below the minimum",
            |s, _| s.battery = Some(Battery { percent: 50.0, on_ac: true }),
            ManualPause::None,
            Some(&[BatteryLow]),
        ),
        ("on AC, charged", |s, _| s.battery = Some(Battery { percent: 90.0, on_ac: true }), ManualPause::None, None),
        (
            "a full-screen window in front",
            |s, _| s.fullscreen = Some("mpv".into()),
            ManualPause::None,
            Some(&[FullScreen]),
        ),
        (
            "full screen, but the user lets it be",
            |s, l| {
                s.fullscreen = Some("mpv".into());
                l.pause_when_fullscreen = false;
            },
            ManualPause::None,
            None,
        ),
        (
            "an exclusive program runs",
            |s, _| s.exclusive_program = Some("steam".into()),
            ManualPause::None,
            Some(&[ExclusiveProgram]),
        ),
        ("too hot", |s, _| s.cpu_temp_c = Some(85.0), ManualPause::None, Some(&[TooHot])),
        (
            "custom temperature limit",
            |s, l| {
                s.cpu_temp_c = Some(71.0);
                l.max_cpu_temp_c = 70.0
            },
            ManualPause::None,
            Some(&[TooHot]),
        ),
        ("no temperature sensor", |s, _| s.cpu_temp_c = None, ManualPause::None, None),
        ("no sandbox required, none known", |_, _| {}, ManualPause::None, None),
        (
            "IT policy unreadable",
            |_, l| l.policy_unreadable = Some("IT policy unreadable: /etc/idlemesh/policy.toml: not valid TOML".into()),
            ManualPause::None,
            Some(&[PolicyUnreadable]),
        ),
        (
            "sandbox required, not known yet",
            |_, l| l.require_sandbox = vec![Layer::Seccomp],
            ManualPause::None,
            Some(&[SandboxMissing]),
        ),
        (
            "sandbox required and in force",
            |s, l| {
                s.sandbox = sandbox_without_netns();
                l.require_sandbox = vec![Layer::Seccomp, Layer::Landlock, Layer::NoNewPrivs]
            },
            ManualPause::None,
            None,
        ),
        (
            "sandbox required, a layer missing",
            |s, l| {
                s.sandbox = sandbox_without_netns();
                l.require_sandbox = vec![Layer::Seccomp, Layer::Netns]
            },
            ManualPause::None,
            Some(&[SandboxMissing]),
        ),
        (
            "inside allowed hours",
            |_, l| l.allowed_hours = Some(Hours { start_minute: 9 * 60, end_minute: 17 * 60 }),
            ManualPause::None,
            None,
        ),
        (
            "outside allowed hours",
            |s, l| {
                s.local_minute_of_day = 8 * 60;
                l.allowed_hours = Some(Hours { start_minute: 9 * 60, end_minute: 17 * 60 })
            },
            ManualPause::None,
            Some(&[OutsideHours]),
        ),
        (
            "night window, after midnight",
            |s, l| {
                s.local_minute_of_day = 60;
                l.allowed_hours = Some(Hours { start_minute: 22 * 60, end_minute: 6 * 60 })
            },
            ManualPause::None,
            None,
        ),
        (
            "night window, at noon",
            |s, l| {
                s.local_minute_of_day = 12 * 60;
                l.allowed_hours = Some(Hours { start_minute: 22 * 60, end_minute: 6 * 60 })
            },
            ManualPause::None,
            Some(&[OutsideHours]),
        ),
        ("metered network", |s, _| s.metered_network = Some(true), ManualPause::None, Some(&[MeteredNetwork])),
        (
            "metered network, allowed",
            |s, l| {
                s.metered_network = Some(true);
                l.pause_on_metered_network = false
            },
            ManualPause::None,
            None,
        ),
        (
            "upload cap used up",
            |s, l| {
                s.uploaded_today_bytes = 50_000_000;
                l.daily_upload_cap_bytes = Some(50_000_000)
            },
            ManualPause::None,
            Some(&[UploadCapReached]),
        ),
        (
            "download cap used up",
            |s, l| {
                s.downloaded_today_bytes = 60_000_000;
                l.daily_download_cap_bytes = Some(50_000_000)
            },
            ManualPause::None,
            Some(&[DownloadCapReached]),
        ),
        (
            "under both caps",
            |s, l| {
                s.uploaded_today_bytes = 1;
                l.daily_upload_cap_bytes = Some(2);
                l.daily_download_cap_bytes = Some(2)
            },
            ManualPause::None,
            None,
        ),
        (
            "paused by the user for a while",
            |_, _| {},
            ManualPause::Until { until_ms: T0 + 15 * MIN },
            Some(&[PausedByUser]),
        ),
        ("a manual pause that has run out", |_, _| {}, ManualPause::Until { until_ms: T0 - 1 }, None),
        ("paused until resumed", |_, _| {}, ManualPause::UntilResumed, Some(&[PausedByUser])),
        (
            "everything at once: every reason listed",
            |s, l| {
                s.user_idle = Some(Duration::from_secs(1));
                s.battery = Some(Battery { percent: 30.0, on_ac: false });
                s.cpu_temp_c = Some(99.0);
                s.metered_network = Some(true);
                s.local_minute_of_day = 3 * 60;
                l.allowed_hours = Some(Hours { start_minute: 9 * 60, end_minute: 17 * 60 });
            },
            ManualPause::UntilResumed,
            Some(&[PausedByUser, UserActive, OnBattery, TooHot, OutsideHours, MeteredNetwork]),
        ),
    ];
    for (name, tweak, pause, expected) in table {
        let (mut s, mut l) = (snap(), limits());
        tweak(&mut s, &mut l);
        let (d, _) = decide(&GovernorState::default(), &s, &l, Pauses::both(*pause));
        match expected {
            None => {
                assert_eq!(
                    d.action,
                    Action::Run { cores: l.cores, duty_cycle_percent: l.duty_cycle_percent, gpu: false, cpu: true },
                    "{name}: {d:?}"
                );
                assert!(codes(&d).contains(&Throttled), "{name}: a run says how much it uses");
            }
            Some(want) => {
                assert!(d.is_paused(), "{name}: expected a pause, got {d:?}");
                assert_eq!(codes(&d), want.to_vec(), "{name}");
            }
        }
        assert!(d.reasons.iter().all(|r| !r.text.is_empty()), "{name}: every reason has words");
    }
}

#[test]
fn reasons_read_as_the_design_says() {
    let mut s = snap();
    s.user_idle = Some(Duration::from_secs(3));
    let (d, _) = decide(&GovernorState::default(), &s, &limits(), Pauses::default());
    assert!(d.reasons[0].text.starts_with("user active 3 s ago"), "{}", d.reasons[0].text);

    let mut l = limits();
    l.run_on_battery = true;
    l.min_battery_percent = 50;
    s.user_idle = None;
    s.battery = Some(Battery { percent: 41.0, on_ac: false });
    let (d, _) = decide(&GovernorState::default(), &s, &l, Pauses::default());
    assert_eq!(d.reasons[0].text, "on battery 41% < 50%");

    let full = Snapshot { fullscreen: Some("mpv".into()), exclusive_program: Some("steam".into()), ..snap() };
    let (d, _) = decide(&GovernorState::default(), &full, &limits(), Pauses::default());
    let texts: Vec<&str> = d.reasons.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(
        texts,
        ["a full-screen window is in front (mpv)", "steam is running, and you asked to lend nothing while it does"]
    );

    // T0 is 13:00 UTC; the user's clock is UTC+1, so 15 minutes on is 14:15 for them.
    let (d, _) = decide(
        &GovernorState::default(),
        &snap(),
        &limits(),
        Pauses::both(ManualPause::Until { until_ms: T0 + 15 * MIN }),
    );
    assert_eq!(d.reasons[0].text, "paused by you until 14:15");
}

#[test]
fn defaults_follow_the_design() {
    let l = Limits::defaults(8, 16 << 30);
    assert_eq!((l.idle_after, l.cores, l.duty_cycle_percent), (Duration::from_secs(180), 4, 60));
    assert_eq!((l.gpu_enabled, l.run_on_battery, l.min_battery_percent, l.max_cpu_temp_c), (false, false, 80, 85.0));
    assert_eq!((l.allowed_hours, l.memory_per_task_bytes, l.pause_on_metered_network), (None, 4 << 30, true));
    assert_eq!((l.max_other_cpu_percent, l.max_other_gpu_percent), (50.0, 20.0));
    assert_eq!(Limits::defaults(1, 0).cores, 1, "at least one core");
}

/// Runs a sequence of snapshots through the governor, carrying its state.
fn run(l: &Limits, steps: &[Snapshot]) -> Vec<bool> {
    let mut state = GovernorState::default();
    steps
        .iter()
        .map(|s| {
            let (d, next) = decide(&state, s, l, Pauses::default());
            state = next;
            d.is_paused()
        })
        .collect()
}

#[test]
fn battery_resumes_only_past_the_hysteresis() {
    let mut l = limits();
    l.run_on_battery = true;
    let at = |percent: f32, on_ac: bool| Snapshot { battery: Some(Battery { percent, on_ac }), ..snap() };
    let paused =
        run(&l, &[at(81.0, false), at(79.0, false), at(80.5, true), at(84.0, true), at(85.0, true), at(83.0, true)]);
    assert_eq!(paused, [false, true, true, true, false, false]);
}

#[test]
fn temperature_resumes_only_after_cooling() {
    let l = limits();
    let at = |t: f32| Snapshot { cpu_temp_c: Some(t), ..snap() };
    assert_eq!(
        run(&l, &[at(84.0), at(86.0), at(84.0), at(81.0), at(80.0), at(84.9)]),
        [false, true, true, true, false, false]
    );
}

#[test]
fn other_load_needs_a_grace_period_both_ways() {
    let l = limits();
    let at = |secs: u64, load: f32| Snapshot { at_ms: T0 + secs * 1000, other_cpu_percent: Some(load), ..snap() };
    let paused = run(
        &l,
        &[
            at(0, 90.0),  // a spike: not yet
            at(5, 10.0),  // gone: the clock resets
            at(6, 90.0),  // busy again
            at(15, 90.0), // 9 s: still within grace
            at(16, 90.0), // 10 s: pause
            at(17, 48.0), // below the limit but inside the hysteresis band: stay paused
            at(20, 30.0), // quiet starts
            at(29, 30.0), // 9 s quiet
            at(30, 30.0), // 10 s quiet: resume
        ],
    );
    assert_eq!(paused, [false, false, false, false, true, true, true, true, false]);
}

#[test]
fn hours_wrap_midnight() {
    let night = Hours { start_minute: 22 * 60, end_minute: 6 * 60 };
    assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
    assert!(!night.contains(6 * 60) && !night.contains(12 * 60) && !night.contains(22 * 60 - 1));
    let day = Hours { start_minute: 9 * 60, end_minute: 17 * 60 };
    assert!(day.contains(9 * 60) && !day.contains(17 * 60));
}

#[test]
fn a_missing_sandbox_layer_is_named_with_why() {
    let s = Snapshot { sandbox: sandbox_without_netns(), ..snap() };
    let l = Limits { require_sandbox: vec![Layer::Netns, Layer::Seccomp], ..limits() };
    let (d, _) = decide(&GovernorState::default(), &s, &l, Pauses::default());
    assert!(d.is_paused());
    assert_eq!(
        d.reasons[0].text,
        "the worker sandbox lacks netns (user namespaces are off), which require_sandbox asks for"
    );
}

#[test]
fn not_knowing_in_a_graphical_session_says_why() {
    let s = Snapshot {
        user_idle: None,
        graphical_session: Some("a graphical session is set for this agent (DISPLAY=:7)".into()),
        ..snap()
    };
    let (d, _) = decide(&GovernorState::default(), &s, &limits(), Pauses::default());
    assert!(d.is_paused());
    assert_eq!(
        d.reasons[0].text,
        "cannot tell whether you are using this machine (a graphical session is set for this agent (DISPLAY=:7))"
    );
}

#[test]
fn traffic_follows_metering_the_users_leave_and_the_daily_caps() {
    let metered = Snapshot { metered_network: Some(true), ..snap() };
    let mut l = limits();
    assert_eq!(traffic_allowed(&snap(), &l), Traffic::All);
    assert_eq!(
        traffic_allowed(&Snapshot { metered_network: None, ..snap() }, &l),
        Traffic::All,
        "unknown is not metered"
    );
    assert_eq!(traffic_allowed(&metered, &l), Traffic::None, "metered, nothing allowed");
    l.metered_small_traffic = true;
    assert_eq!(traffic_allowed(&metered, &l), Traffic::LeaseUpkeep);
    l.allow_metered = true;
    assert_eq!(traffic_allowed(&metered, &l), Traffic::All);
    // A used-up cap stops uploads and downloads, not lease upkeep, metered or not.
    let l = Limits { daily_upload_cap_bytes: Some(1_000), ..limits() };
    let used = Snapshot { uploaded_today_bytes: 1_000, ..snap() };
    assert_eq!(traffic_allowed(&used, &l), Traffic::LeaseUpkeep);
    assert_eq!(traffic_allowed(&Snapshot { uploaded_today_bytes: 999, ..snap() }, &l), Traffic::All);
    let l = Limits { daily_download_cap_bytes: Some(1_000), ..limits() };
    assert_eq!(traffic_allowed(&Snapshot { downloaded_today_bytes: 5_000, ..snap() }, &l), Traffic::LeaseUpkeep);
    assert_eq!(traffic_allowed(&Snapshot { downloaded_today_bytes: 5_000, ..metered }, &l), Traffic::None);
    // The decision carries it, paused or not.
    let (d, _) = decide(
        &GovernorState::default(),
        &used,
        &Limits { daily_upload_cap_bytes: Some(1_000), ..limits() },
        Pauses::default(),
    );
    assert_eq!(d.traffic, Traffic::LeaseUpkeep);
}

/// One kind of work stopped, the other running: the user's pause of one
/// kind, and the GPU switched off. A reason for all work stops both.
#[test]
fn each_kind_of_work_stops_on_its_own() {
    let gpu_on = Limits { gpu_enabled: true, ..limits() };
    let until = ManualPause::Until { until_ms: T0 + 15 * MIN };
    let gpu_paused = Pauses { cpu: ManualPause::None, gpu: ManualPause::UntilResumed };
    let cpu_paused = Pauses { cpu: until, gpu: ManualPause::None };
    // (name, limits, pauses, user idle s, expected (cpu, gpu) or None for a pause, scoped reason text)
    type Row<'a> = (&'a str, &'a Limits, Pauses, u64, Option<(bool, bool)>, Option<(Scope, &'a str)>);
    let table: &[Row] = &[
        ("both run", &gpu_on, Pauses::default(), 600, Some((true, true)), None),
        ("GPU off in the settings: CPU only", &limits(), Pauses::default(), 600, Some((true, false)), None),
        (
            "GPU paused by the user: CPU goes on",
            &gpu_on,
            gpu_paused,
            600,
            Some((true, false)),
            Some((Scope::Gpu, "GPU work paused by you until you resume")),
        ),
        (
            "CPU paused by the user: the GPU goes on",
            &gpu_on,
            cpu_paused,
            600,
            Some((false, true)),
            Some((Scope::Cpu, "processor work paused by you until 14:15")),
        ),
        ("CPU paused, GPU off: nothing runs", &limits(), cpu_paused, 600, None, None),
        (
            "both paused alike: one reason for all",
            &gpu_on,
            Pauses::both(until),
            600,
            None,
            Some((Scope::All, "paused by you until 14:15")),
        ),
        ("GPU paused and the user back: nothing runs", &gpu_on, gpu_paused, 3, None, None),
        (
            "a pause that ran out holds no more",
            &gpu_on,
            Pauses { cpu: ManualPause::Until { until_ms: T0 - 1 }, gpu: ManualPause::None },
            600,
            Some((true, true)),
            None,
        ),
    ];
    for (name, l, pauses, idle, expected, scoped) in table {
        let s = Snapshot { user_idle: Some(Duration::from_secs(*idle)), ..snap() };
        let (d, _) = decide(&GovernorState::default(), &s, l, *pauses);
        match expected {
            Some((cpu, gpu)) => {
                assert!(!d.is_paused(), "{name}: {d:?}");
                assert_eq!((d.cpu_runs(), d.gpu_runs()), (*cpu, *gpu), "{name}: {d:?}");
            }
            None => assert!(d.is_paused(), "{name}: {d:?}"),
        }
        if let Some((scope, text)) = scoped {
            let r = d.reasons.iter().find(|r| r.code == PausedByUser).unwrap_or_else(|| panic!("{name}: {d:?}"));
            assert_eq!((r.scope, r.text.as_str()), (*scope, *text), "{name}");
        }
        assert!(d.reasons.iter().all(|r| !r.text.is_empty()), "{name}: every reason has words");
    }
    // GPU work on, but no GPU found: the processor paused leaves nothing
    // to run (not "using the GPU only"), and work runs on the CPU alone.
    let none_found = Snapshot { user_idle: Some(Duration::from_secs(600)), gpu_found: Some(false), ..snap() };
    let (d, _) = decide(&GovernorState::default(), &none_found, &gpu_on, cpu_paused);
    assert!(d.is_paused(), "no GPU found, CPU paused: {d:?}");
    let (d, _) = decide(&GovernorState::default(), &none_found, &gpu_on, Pauses::default());
    assert_eq!((d.cpu_runs(), d.gpu_runs()), (true, false), "no GPU found: {d:?}");
}

#[test]
fn pauses_of_each_kind_combine_and_run_out() {
    let until = |m: u64| ManualPause::Until { until_ms: T0 + m * MIN };
    let mut p = Pauses::default();
    p.set(Scope::Gpu, ManualPause::UntilResumed);
    assert_eq!((p.cpu, p.gpu, p.all()), (ManualPause::None, ManualPause::UntilResumed, ManualPause::None));
    p.set(Scope::Cpu, until(15));
    assert_eq!(p.all(), until(15), "all work is paused until the shorter pause ends");
    p.set(Scope::All, until(60));
    assert_eq!(p, Pauses::both(until(60)));
    p.set(Scope::Gpu, until(5));
    p.expire(T0 + 10 * MIN);
    assert_eq!((p.cpu, p.gpu), (until(60), ManualPause::None), "the GPU's pause ran out, the CPU's holds");
}

/// Another program on the GPU stops GPU work alone, after a short grace,
/// and only once it has been quiet for a while does GPU work start again;
/// not knowing (our own kernel running) changes nothing.
#[test]
fn another_program_on_the_gpu_stops_gpu_work_alone() {
    let l = Limits { gpu_enabled: true, ..limits() };
    let at = |s: u64, gpu: Option<f32>| Snapshot { at_ms: T0 + s * 1000, other_gpu_percent: gpu, ..snap() };
    // (seconds, other programs' GPU %, GPU work runs after it)
    let steps: &[(u64, Option<f32>, bool)] = &[
        (0, Some(5.0), true),
        (1, Some(63.0), true),  // over the limit: the grace starts
        (2, Some(63.0), true),  // 1 s over
        (3, Some(63.0), false), // 2 s over: GPU work stops
        (4, None, false),       // unknown: as it was
        (5, Some(18.0), false), // under the limit, not by the margin
        (6, Some(10.0), false), // quiet from here ...
        (15, Some(10.0), false),
        (16, Some(10.0), true), // ... for 10 s: GPU work again
        (17, None, true),       // unknown: as it was
    ];
    let mut state = GovernorState::default();
    for &(second, gpu, runs) in steps {
        let (d, next) = decide(&state, &at(second, gpu), &l, Pauses::default());
        state = next;
        assert!(d.cpu_runs(), "{second} s: processor work goes on: {d:?}");
        assert_eq!(d.gpu_runs(), runs, "{second} s: {d:?}");
        let busy = d.reasons.iter().find(|r| r.code == GpuBusy);
        assert_eq!(busy.is_some(), !runs, "{second} s: {d:?}");
        if let Some(r) = busy {
            assert_eq!(r.scope, Scope::Gpu);
            if second == 3 {
                assert_eq!(r.text, "GPU busy with another program (63 %); limit 20 %");
            }
        }
    }
    // With the GPU off in the settings, nothing to say about it.
    let mut state = GovernorState::default();
    for second in 0..5 {
        let (d, next) = decide(&state, &at(second, Some(90.0)), &limits(), Pauses::default());
        state = next;
        assert!(d.reasons.iter().all(|r| r.code != GpuBusy), "{d:?}");
    }
}
