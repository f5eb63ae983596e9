//! Organisations and their enrollment tokens.
//!
//! An IT department gets an organisation and hands its devices a token
//! (through the policy file). The pool stores only the token's SHA-256, so a
//! copy of the database enrolls nobody; a token expires, can be revoked and
//! can be limited to a number of devices, and every refusal says which.

use std::collections::BTreeMap;

use super::{Store, StoreError};
use crate::db::{DbError, Row, args};
use idlemesh_protocol::api::{Org, OrgDevice, OrgStats, TokenCreate, TokenCreated, TokenInfo};
use idlemesh_protocol::{PublicKey, Sha256};

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

fn org_row(r: &Row) -> Result<Org, DbError> {
    Ok(Org { org_id: r.u64(0)?, name: r.text(1)?, created_ms: r.u64(2)? })
}

const TOKEN_COLUMNS: &str = "id, org_id, label, created_ms, expires_ms, revoked_ms, uses, max_uses";

fn token_row(r: &Row) -> Result<TokenInfo, DbError> {
    Ok(TokenInfo {
        token_id: r.u64(0)?,
        org_id: r.u64(1)?,
        label: r.opt_text(2)?,
        created_ms: r.u64(3)?,
        expires_ms: r.u64(4)?,
        revoked_ms: r.opt_u64(5)?,
        uses: r.u64(6)?,
        max_uses: r.opt_u64(7)?,
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
        // One statement, so two pool replicas creating one name cannot both succeed.
        let added = self.db.opt_row(
            "INSERT INTO orgs (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING RETURNING id",
            args![name, now],
        )?;
        match added {
            Some(row) => Ok(Org { org_id: row.u64(0)?, name: name.into(), created_ms: now }),
            None => {
                let id = self.db.row("SELECT id FROM orgs WHERE name = ?1", args![name])?.u64(0)?;
                Err(StoreError::Conflict(format!("an organisation named {name:?} exists already (id {id})")))
            }
        }
    }

    pub fn orgs(&self) -> Result<Vec<Org>, StoreError> {
        Ok(self
            .db
            .query("SELECT id, name, created_ms FROM orgs ORDER BY id", args![])?
            .iter()
            .map(org_row)
            .collect::<Result<_, _>>()?)
    }

    fn org(&self, org_id: u64) -> Result<Org, StoreError> {
        let row = self
            .db
            .opt_row("SELECT id, name, created_ms FROM orgs WHERE id = ?1", args![org_id])?
            .ok_or_else(|| StoreError::NotFound { what: "organisation", id: org_id.to_string() })?;
        Ok(org_row(&row)?)
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
        let token_id = self
            .db
            .row(
                "INSERT INTO enrollment_tokens (org_id, token_sha256, label, created_ms, expires_ms, max_uses)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                args![org_id, hash(&token), req.label.as_deref(), now, expires_ms, req.max_uses],
            )?
            .u64(0)?;
        let info = TokenInfo {
            token_id,
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
        let row = self
            .db
            .opt_row(
                &format!(
                    "UPDATE enrollment_tokens SET revoked_ms = coalesce(revoked_ms, ?2) WHERE id = ?1 RETURNING {TOKEN_COLUMNS}"
                ),
                args![token_id, now],
            )?
            .ok_or_else(|| StoreError::NotFound { what: "enrollment token", id: token_id.to_string() })?;
        Ok(token_row(&row)?)
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
        let secret = token;
        let existing = self.existing_device(key)?;
        let token = match token {
            None => None,
            Some(secret) => Some(token_row(
                &self
                    .db
                    .opt_row(
                        &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_sha256 = ?1"),
                        args![hash(secret)],
                    )?
                    .ok_or(StoreError::Token(
                        TokenRefusal::Unknown,
                        "this enrollment token is not one of this pool's".into(),
                    ))?,
            )?),
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
                    (None, Some(_)) => use_token(self.db.as_ref(), token.as_ref().expect("org from token"), id)?,
                    _ => {}
                }
                id
            }
            None => {
                // Refuse before writing anything.
                if let Some(t) = &token {
                    check_uses(t)?;
                }
                let tx = self.db.savepoint()?;
                // Two pool replicas enrolling one key at once make one device.
                let added = tx.opt_row(
                    "INSERT INTO devices (public_key, info, enrolled_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING RETURNING id",
                    args![key.to_hex(), info, now],
                )?;
                let Some(added) = added else {
                    // Committed meanwhile by another pool replica: found again.
                    drop(tx);
                    return self.enroll(key, info, secret, now);
                };
                let id = added.int(0)?;
                if let Some(t) = &token {
                    use_token(&*tx, t, id)?;
                }
                tx.commit()?;
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

    fn existing_device(&self, key: &PublicKey) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        let row = self.db.opt_row("SELECT id, org_id FROM devices WHERE public_key = ?1", args![key.to_hex()])?;
        Ok(row.map(|r| Ok::<_, DbError>((r.int(0)?, r.opt_int(1)?))).transpose()?)
    }

    pub fn org_stats(&self, org_id: u64) -> Result<OrgStats, StoreError> {
        let org = self.org(org_id)?;
        let devices = self
            .db
            .query(
                "SELECT id, enrolled_ms, info, credits, valid_results, invalid_results FROM devices
                 WHERE org_id = ?1 ORDER BY id",
                args![org_id],
            )?
            .iter()
            .map(|r| {
                Ok(OrgDevice {
                    device_id: r.u64(0)?,
                    enrolled_ms: r.u64(1)?,
                    device_info: serde_json::from_str::<BTreeMap<String, String>>(&r.text(2)?).unwrap_or_default(),
                    credits: r.real(3)?,
                    valid_results: r.u64(4)?,
                    invalid_results: r.u64(5)?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        let tokens = self
            .db
            .query(
                &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE org_id = ?1 ORDER BY id"),
                args![org_id],
            )?
            .iter()
            .map(token_row)
            .collect::<Result<Vec<_>, _>>()?;
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

/// Counts a device in against its token, atomically: two pool replicas
/// cannot both take a token's last use.
fn use_token(db: &dyn crate::db::Db, t: &TokenInfo, device_id: i64) -> Result<(), StoreError> {
    check_uses(t)?;
    let counted = db.execute(
        "UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?1 AND (max_uses IS NULL OR uses < max_uses)",
        args![t.token_id],
    )?;
    if counted == 0 {
        return Err(StoreError::Token(
            TokenRefusal::UsedUp,
            "this enrollment token has enrolled all its devices already".into(),
        ));
    }
    db.execute("UPDATE devices SET org_id = ?1, token_id = ?2 WHERE id = ?3", args![t.org_id, t.token_id, device_id])?;
    Ok(())
}
