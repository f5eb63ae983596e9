//! Organisations and their enrollment tokens.
//!
//! An IT department gets an organisation and hands its devices a token
//! (through the policy file). The pool stores only the token's SHA-256, so a
//! copy of the database enrolls nobody; a token expires, can be revoked and
//! can be limited to a number of devices, and every refusal says which.

use std::collections::BTreeMap;

use idlemesh_protocol::api::{Org, OrgDevice, OrgStats, TokenCreate, TokenCreated, TokenInfo};
use idlemesh_protocol::{PublicKey, Sha256};
use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, exec};

/// Tokens are long random secrets with a recognisable prefix, so one pasted
/// into the wrong place is easy to spot (and to scan for).
const TOKEN_PREFIX: &str = "imt_";
/// Longest a token may be valid: a year.
const MAX_TOKEN_LIFETIME_S: u64 = 366 * 24 * 3600;

/// Why a device's enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    Unknown,
    Expired,
    Revoked,
    UsedUp,
}

impl TokenRefusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::Unknown => "token_unknown",
            Self::Expired => "token_expired",
            Self::Revoked => "token_revoked",
            Self::UsedUp => "token_used_up",
        }
    }
}

fn hash(token: &str) -> String {
    Sha256::of(token.as_bytes()).to_hex()
}

fn org_row(r: &Row<'_>) -> rusqlite::Result<Org> {
    Ok(Org { org_id: r.get::<_, i64>(0)? as u64, name: r.get(1)?, created_ms: r.get::<_, i64>(2)? as u64 })
}

const TOKEN_COLUMNS: &str = "id, org_id, label, created_ms, expires_ms, revoked_ms, uses, max_uses";

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        token_id: r.get::<_, i64>(0)? as u64,
        org_id: r.get::<_, i64>(1)? as u64,
        label: r.get(2)?,
        created_ms: r.get::<_, i64>(3)? as u64,
        expires_ms: r.get::<_, i64>(4)? as u64,
        revoked_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        uses: r.get::<_, i64>(6)? as u64,
        max_uses: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
    })
}

fn check_uses(t: &TokenInfo) -> Result<(), StoreError> {
    if t.max_uses.is_some_and(|max| t.uses >= max) {
        return Err(StoreError::Token(
            TokenRefusal::UsedUp,
            format!("this enrollment token has enrolled its {} devices already", t.uses),
        ));
    }
    Ok(())
}

impl Store {
    pub fn create_org(&mut self, name: &str, now: u64) -> Result<Org, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid("an organisation's name must be 1..=200 characters".into()));
        }
        let taken: Option<i64> =
            self.conn.query_row("SELECT id FROM orgs WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        if let Some(id) = taken {
            return Err(StoreError::Conflict(format!("an organisation named {name:?} exists already (id {id})")));
        }
        exec(&self.conn, "INSERT INTO orgs (name, created_ms) VALUES (?1, ?2)", params![name, now as i64])?;
        Ok(Org { org_id: self.conn.last_insert_rowid() as u64, name: name.into(), created_ms: now })
    }

    pub fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, name, created_ms FROM orgs ORDER BY id")?;
        Ok(stmt.query_map([], org_row)?.collect::<Result<_, _>>()?)
    }

    fn org(&self, org_id: u64) -> Result<Org, StoreError> {
        self.conn
            .query_row("SELECT id, name, created_ms FROM orgs WHERE id = ?1", [org_id as i64], org_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: "organisation", id: org_id.to_string() })
    }

    pub fn create_token(&mut self, org_id: u64, req: &TokenCreate, now: u64) -> Result<TokenCreated, StoreError> {
        self.org(org_id)?;
        if req.expires_in_s == 0 || req.expires_in_s > MAX_TOKEN_LIFETIME_S {
            return Err(StoreError::Invalid(format!(
                "expires_in_s {} is outside 1..={MAX_TOKEN_LIFETIME_S} (a year)",
                req.expires_in_s
            )));
        }
        if req.max_uses == Some(0) || req.max_uses.is_some_and(|n| n > i64::MAX as u64) {
            return Err(StoreError::Invalid("max_uses must be at least 1".into()));
        }
        if req.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
            return Err(StoreError::Invalid("label must be at most 200 characters".into()));
        }
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret).expect("the OS has no randomness source");
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let expires_ms = now + req.expires_in_s * 1000;
        exec(
            &self.conn,
            "INSERT INTO enrollment_tokens (org_id, token_sha256, label, created_ms, expires_ms, max_uses)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                org_id as i64,
                hash(&token),
                req.label,
                now as i64,
                expires_ms as i64,
                req.max_uses.map(|n| n as i64)
            ],
        )?;
        let info = TokenInfo {
            token_id: self.conn.last_insert_rowid() as u64,
            org_id,
            label: req.label.clone(),
            created_ms: now,
            expires_ms,
            revoked_ms: None,
            uses: 0,
            max_uses: req.max_uses,
        };
        Ok(TokenCreated { token, info })
    }

    /// Revoking twice is harmless and keeps the first time.
    pub fn revoke_token(&mut self, token_id: u64, now: u64) -> Result<TokenInfo, StoreError> {
        let changed = exec(
            &self.conn,
            "UPDATE enrollment_tokens SET revoked_ms = coalesce(revoked_ms, ?2) WHERE id = ?1",
            params![token_id as i64, now as i64],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound { what: "enrollment token", id: token_id.to_string() });
        }
        Ok(self.conn.query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?1"),
            [token_id as i64],
            token_row,
        )?)
    }

    /// Enrolls a device (or finds it again) with an optional token; the
    /// organisation comes from the token. A device that is already in the
    /// token's organisation is simply found again, even once the token has
    /// expired or been revoked: those stop new devices, not enrolled ones.
    pub fn enroll(
        &mut self,
        key: &PublicKey,
        info: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<(u64, Option<Org>), StoreError> {
        let existing: Option<(i64, Option<i64>)> = self
            .conn
            .query_row("SELECT id, org_id FROM devices WHERE public_key = ?1", [key.to_hex()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let token = match token {
            None => None,
            Some(secret) => Some(
                self.conn
                    .query_row(
                        &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_sha256 = ?1"),
                        [hash(secret)],
                        token_row,
                    )
                    .optional()?
                    .ok_or(StoreError::Token(
                        TokenRefusal::Unknown,
                        "this enrollment token is not one of this pool's".into(),
                    ))?,
            ),
        };
        let member_already = matches!((&existing, &token), (Some((_, Some(org))), Some(t)) if *org == t.org_id as i64);
        if let (Some(t), false) = (&token, member_already) {
            if let Some(at) = t.revoked_ms {
                return Err(StoreError::Token(
                    TokenRefusal::Revoked,
                    format!("this enrollment token was revoked (at {at} ms since the epoch)"),
                ));
            }
            if now >= t.expires_ms {
                return Err(StoreError::Token(
                    TokenRefusal::Expired,
                    format!("this enrollment token expired (at {} ms since the epoch)", t.expires_ms),
                ));
            }
        }
        let org_id = token.as_ref().map(|t| t.org_id as i64);
        let device_id = match existing {
            Some((id, current)) => {
                match (current, org_id) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(StoreError::Conflict(format!(
                            "this device is enrolled in organisation {a} already; it cannot join {b} too"
                        )));
                    }
                    (None, Some(_)) => self.use_token(token.as_ref().expect("org from token"), id)?,
                    _ => {}
                }
                id
            }
            None => {
                // Refuse before writing anything.
                if let Some(t) = &token {
                    check_uses(t)?;
                }
                exec(
                    &self.conn,
                    "INSERT INTO devices (public_key, info, enrolled_ms) VALUES (?1, ?2, ?3)",
                    params![key.to_hex(), info, now as i64],
                )?;
                let id = self.conn.last_insert_rowid();
                if let Some(t) = &token {
                    self.use_token(t, id)?;
                }
                id
            }
        };
        let org = match token {
            Some(t) => Some(self.org(t.org_id)?),
            None => match existing.and_then(|(_, org)| org) {
                Some(org) => Some(self.org(org as u64)?),
                None => None,
            },
        };
        Ok((device_id as u64, org))
    }

    fn use_token(&self, t: &TokenInfo, device_id: i64) -> Result<(), StoreError> {
        check_uses(t)?;
        exec(&self.conn, "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1", [t.token_id as i64])?;
        exec(
            &self.conn,
            "UPDATE devices SET org_id = ?1, token_id = ?2 WHERE id = ?3",
            params![t.org_id as i64, t.token_id as i64, device_id],
        )?;
        Ok(())
    }

    pub fn org_stats(&self, org_id: u64) -> Result<OrgStats, StoreError> {
        let org = self.org(org_id)?;
        let mut stmt = self.conn.prepare(
            "SELECT id, enrolled_ms, info, credits, valid_results, invalid_results FROM devices
             WHERE org_id = ?1 ORDER BY id",
        )?;
        let devices = stmt
            .query_map([org_id as i64], |r| {
                let info: String = r.get(2)?;
                Ok(OrgDevice {
                    device_id: r.get::<_, i64>(0)? as u64,
                    enrolled_ms: r.get::<_, i64>(1)? as u64,
                    device_info: serde_json::from_str::<BTreeMap<String, String>>(&info).unwrap_or_default(),
                    credits: r.get(3)?,
                    valid_results: r.get::<_, i64>(4)? as u64,
                    invalid_results: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE org_id = ?1 ORDER BY id"))?;
        let tokens = stmt.query_map([org_id as i64], token_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(OrgStats {
            org,
            credits: devices.iter().map(|d| d.credits).sum(),
            valid_results: devices.iter().map(|d| d.valid_results).sum(),
            invalid_results: devices.iter().map(|d| d.invalid_results).sum(),
            devices,
            tokens,
        })
    }
}
