//! X11: the idle time from the XScreenSaver extension (one round trip, tens
//! of microseconds), and the user's return from a SYNC alarm on the
//! server's `IDLETIME` counter. The server sends the alarm as it handles the
//! input that ends a quiet spell, so input wakes the watcher itself: no
//! polling while a kernel runs (issue 20). The alarm has a connection and a
//! thread of its own, blocked on the socket until the server writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use x11rb::connection::{Connection as _, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::screensaver::{self, ConnectionExt as _};
use x11rb::protocol::sync::{self, ALARMSTATE, ChangeAlarmAux, ConnectionExt as _, CreateAlarmAux, Int64};
use x11rb::rust_connection::RustConnection;

use super::*;
use crate::sensors::{SensorError, Wake};

/// How long to wait before trying a lost connection again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// Input after at least this long without any sets the alarm off. Shorter
/// than any idle delay worth setting, so the first input after the user
/// went away always does; long enough that typing, whose gaps are shorter,
/// does not set it off at every key.
pub(super) const QUIET_SPELL: Duration = Duration::from_millis(100);

pub struct X11Idle {
    /// `None`: the one `DISPLAY` names.
    display: Option<String>,
    conn: Option<(RustConnection, u32)>,
    last_attempt: Instant,
    lost_at: Instant,
    /// Whether the alarm's thread is connected with its alarm set.
    alarm_live: Arc<AtomicBool>,
}

impl X11Idle {
    pub fn connect() -> Result<Self, SensorError> {
        Self::connect_to(None)
    }

    pub(crate) fn connect_to(display: Option<&str>) -> Result<Self, SensorError> {
        Ok(Self {
            display: display.map(str::to_owned),
            conn: Some(open(display)?),
            last_attempt: Instant::now(),
            lost_at: Instant::now(),
            alarm_live: Arc::default(),
        })
    }
}

fn open(display: Option<&str>) -> Result<(RustConnection, u32), SensorError> {
    let (conn, screen) = RustConnection::connect(display)?;
    if conn.extension_information(screensaver::X11_EXTENSION_NAME)?.is_none() {
        return Err(SensorError::Missing("the X server has no MIT-SCREEN-SAVER extension"));
    }
    let root = conn.setup().roots.get(screen).ok_or(SensorError::Missing("the X display has no such screen"))?.root;
    Ok((conn, root))
}

impl IdleSensor for X11Idle {
    fn idle(&mut self) -> Option<Duration> {
        if self.conn.is_none() && self.last_attempt.elapsed() >= RECONNECT_EVERY {
            self.last_attempt = Instant::now();
            self.conn = open(self.display.as_deref()).ok();
        }
        let Some((conn, root)) = self.conn.as_ref() else {
            return super::while_lost(self.lost_at);
        };
        match conn.screensaver_query_info(*root).map_err(SensorError::from).and_then(|c| Ok(c.reply()?)) {
            Ok(r) => Some(Duration::from_millis(u64::from(r.ms_since_user_input))),
            Err(e) => {
                tracing::warn!(error = %e, "lost the X display; the user counts as present for a minute");
                self.conn = None;
                self.last_attempt = Instant::now();
                self.lost_at = Instant::now();
                super::while_lost(self.lost_at)
            }
        }
    }

    fn name(&self) -> &'static str {
        "x11-screensaver"
    }

    fn wake_on_input(&mut self, wake: Wake) -> bool {
        // Set up once here, so a server without SYNC is known at once.
        let alarm = match Alarm::open(self.display.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "no input alarm: the idle time is polled while a kernel runs");
                return false;
            }
        };
        let (live, display) = (self.alarm_live.clone(), self.display.clone());
        live.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new().name("x11-input-alarm".into()).spawn(move || {
            let mut alarm = Some(alarm);
            loop {
                if let Some(a) = alarm.take() {
                    live.store(true, Ordering::Release);
                    let e = a.follow(&wake);
                    live.store(false, Ordering::Release);
                    tracing::warn!(error = %e, "lost the X display's input alarm; polling until it is back");
                }
                std::thread::sleep(RECONNECT_EVERY);
                alarm = Alarm::open(display.as_deref()).ok();
            }
        });
        if let Err(e) = spawned {
            self.alarm_live.store(false, Ordering::Release);
            tracing::warn!(error = %e, "cannot start the input alarm's thread");
            return false;
        }
        true
    }

    fn wakes_on_input(&self) -> bool {
        self.alarm_live.load(Ordering::Acquire)
    }
}

/// A SYNC alarm that goes off when the server's idle time falls below
/// [`QUIET_SPELL`]: on the first input after a quiet spell.
struct Alarm {
    conn: RustConnection,
    id: sync::Alarm,
    counter: sync::Counter,
}

impl Alarm {
    fn open(display: Option<&str>) -> Result<Self, SensorError> {
        let (conn, _) = RustConnection::connect(display)?;
        if conn.extension_information(sync::X11_EXTENSION_NAME)?.is_none() {
            return Err(SensorError::Missing("the X server has no SYNC extension"));
        }
        conn.sync_initialize(3, 1)?.reply()?;
        let counters = conn.sync_list_system_counters()?.reply()?;
        let counter = counters
            .counters
            .iter()
            .find(|c| c.name == b"IDLETIME")
            .ok_or(SensorError::Missing("the X server has no IDLETIME counter"))?
            .counter;
        let id = conn.generate_id()?;
        let aux = CreateAlarmAux::new()
            .counter(counter)
            .value_type(sync::VALUETYPE::ABSOLUTE)
            .value(millis(QUIET_SPELL))
            .test_type(sync::TESTTYPE::NEGATIVE_TRANSITION)
            .delta(Int64 { hi: 0, lo: 0 })
            .events(1);
        conn.sync_create_alarm(id, &aux)?.check()?;
        Ok(Self { conn, id, counter })
    }

    /// Wakes the watcher at each alarm until the connection fails; returns why it did.
    fn follow(self, wake: &Wake) -> SensorError {
        loop {
            match self.conn.wait_for_event() {
                Ok(Event::SyncAlarmNotify(e)) if e.alarm == self.id => {
                    wake();
                    // The protocol leaves an alarm with no delta inactive
                    // after it fires on some servers: set it again.
                    if e.state == ALARMSTATE::INACTIVE
                        && let Err(e) = self.rearm()
                    {
                        return e;
                    }
                }
                Ok(_) => {}
                Err(e) => return e.into(),
            }
        }
    }

    fn rearm(&self) -> Result<(), SensorError> {
        let aux = ChangeAlarmAux::new()
            .counter(self.counter)
            .value_type(sync::VALUETYPE::ABSOLUTE)
            .value(millis(QUIET_SPELL))
            .test_type(sync::TESTTYPE::NEGATIVE_TRANSITION)
            .delta(Int64 { hi: 0, lo: 0 })
            .events(1);
        self.conn.sync_change_alarm(self.id, &aux)?;
        Ok(self.conn.flush()?)
    }
}

fn millis(d: Duration) -> Int64 {
    let ms = d.as_millis() as u64;
    Int64 { hi: (ms >> 32) as i32, lo: ms as u32 }
}

#[cfg(test)]
#[allow(dead_code, reason = "shared with the end-to-end tests; this test uses part of it")]
#[path = "../../../../../tests/common/xvfb.rs"]
pub(crate) mod xvfb;

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// The alarm, not a poll: with nothing polling the sensor, input after
    /// a quiet spell calls `wake`, every time, and nothing else does.
    #[test]
    fn input_after_a_quiet_spell_wakes_the_watcher() {
        let x = super::xvfb::Xvfb::start();
        let mut sensor = X11Idle::connect_to(Some(&x.display)).unwrap();
        let (tx, woken) = mpsc::channel();
        assert!(sensor.wake_on_input(Arc::new(move || {
            let _ = tx.send(Instant::now());
        })));
        assert!(sensor.wakes_on_input());
        for n in 0..3 {
            std::thread::sleep(QUIET_SPELL * 3);
            assert!(woken.try_recv().is_err(), "woken without input (round {n})");
            x.input(n);
            woken.recv_timeout(Duration::from_secs(5)).expect("input after a quiet spell wakes the watcher");
            let idle = sensor.idle().expect("the X server answers");
            assert!(idle < QUIET_SPELL * 3, "the idle time counts from that input: {idle:?}");
        }
    }
}
