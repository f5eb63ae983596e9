//! `idlemesh.exe demo --headless` under Wine: a Windows pool, agent and
//! worker processes, signed manifests and receipts, a ledger; the same PNG
//! as the Linux demo, byte for byte, and a ledger the Windows build verifies.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::wine::{LINUX_BIN, run, win_path, wine};

#[test]
fn the_windows_demo_writes_the_linux_demos_png_and_a_ledger_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (linux_data, linux_out) = (tmp.path().join("linux-data"), tmp.path().join("linux-out"));
    let mut linux = Command::new(LINUX_BIN);
    linux.args(["demo", "--headless", "--json", "--out"]).arg(&linux_out).env("IDLEMESH_DATA_DIR", &linux_data);
    let linux = run("idlemesh demo --headless", linux, Duration::from_secs(300));
    assert!(linux.status.success(), "the Linux demo failed");

    let (data, out) = (tmp.path().join("windows-data"), tmp.path().join("windows-out"));
    let mut windows = wine().idlemesh();
    windows.args(["demo", "--headless", "--json", "--out", &win_path(&out)]).env("IDLEMESH_DATA_DIR", win_path(&data));
    let windows = run("idlemesh.exe demo --headless", windows, Duration::from_secs(600));
    assert!(windows.status.success(), "the Windows demo failed");
    let summary: Value = serde_json::from_slice(&windows.stdout).expect("demo --json prints JSON");
    let tasks = summary["tasks"].as_u64().unwrap();
    assert!(tasks >= 16, "{summary}");
    assert_eq!(summary["tasks_finished"].as_u64(), Some(tasks), "{summary}");
    assert_eq!(summary["receipts"].as_u64(), Some(tasks), "{summary}");
    // GetProcessTimes: the summary once said "CPU time 0.00 s" on Windows.
    assert!(summary["cpu_seconds"].as_f64().is_some_and(|s| s > 0.0), "{summary}");

    let (png, linux_png) = (out.join("mandelbrot.png"), linux_out.join("mandelbrot.png"));
    let (png, linux_png) = (std::fs::read(&png).unwrap(), std::fs::read(&linux_png).unwrap());
    assert!(png == linux_png, "the Windows PNG ({} bytes) differs from Linux's ({} bytes)", png.len(), linux_png.len());

    // The Windows ledger, verified by the Windows build: entries for every
    // task, each receipt's signature checked against the pool's key.
    let mut show = wine().idlemesh();
    show.args(["ledger", "show", "--kind", "task_finished", "--json"]).env("IDLEMESH_DATA_DIR", win_path(&data));
    let show = run("idlemesh.exe ledger show", show, Duration::from_secs(120));
    let finished: Vec<Value> = serde_json::from_slice(&show.stdout).expect("ledger show --json prints JSON");
    assert_eq!(finished.len() as u64, tasks);
    let mut verify = wine().idlemesh();
    verify.args(["ledger", "verify"]).env("IDLEMESH_DATA_DIR", win_path(&data));
    let verify = run("idlemesh.exe ledger verify", verify, Duration::from_secs(120));
    assert_eq!(verify.status.code(), Some(0), "the Windows build could not verify its own ledger");

    // And it would say so if the file were altered: one byte of one entry.
    let ledger = data.join("ledger.sqlite");
    let body = finished[finished.len() / 2]["body"].as_str().unwrap().to_owned();
    crate::harness::alter_wall_ms(&ledger, &body);
    let mut verify = wine().idlemesh();
    verify.args(["ledger", "verify"]).env("IDLEMESH_DATA_DIR", win_path(&data));
    let verify = run("idlemesh.exe ledger verify (altered)", verify, Duration::from_secs(120));
    assert_eq!(verify.status.code(), Some(1), "verify must fail on an altered ledger");
}
