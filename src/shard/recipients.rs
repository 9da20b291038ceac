//! Who may be sent a 1:1 message (`limits.recipients`), and how the broker remembers that a
//! user is known.
//!
//! Under `"any"` every user ID may receive; each new one costs the owner shard a user record.
//! Under `"known"` only users that have logged in at least once may: a send to anyone else is
//! refused with SendAck(USER_UNKNOWN) by the recipient's owner before anything is stored or
//! any record is made, so a spray of made-up recipients costs the broker nothing.
//!
//! Being known is durable without a record kind of its own: at a user's first login (no device
//! cursor yet) the owner logs a cursor record for that device at 0 — which acks nothing — so
//! the user has a cursor from then on: after a restart (recovery rebuilds cursors) and after
//! retention (which restates cursors before it deletes the segment holding them). The app
//! backend can make a user known before any login with [`Shard::register_user`] (on the
//! user's owner shard).

use super::state::Shard;
use super::users::{User, Users};
use crate::config::RecipientPolicy;

impl Shard {
    /// Whether `to` may be sent a 1:1 message (see the module doc).
    pub(super) fn recipient_allowed(&self, users: &Users, to: &str) -> bool {
        match self.cfg.limits.recipients {
            RecipientPolicy::Any => true,
            RecipientPolicy::Known => users.get(to).is_some_and(User::is_known),
        }
    }

    /// At a login: a user without any device cursor gets one for `device` at 0, logged with
    /// the next group commit, so it is known from now on.
    pub(super) fn remember_known(&self, user: &mut User, name: &str, device: &str) {
        if !user.cursors.is_empty() {
            return;
        }
        user.cursors.raise(device, 0);
        if let Some(pos) = self.append_cursor(name, device, 0) {
            user.last_pos = pos;
        }
    }

    /// Makes `name` (owned by this shard) known without a login, e.g. when the app backend
    /// creates the account. Idempotent.
    pub fn register_user(&self, name: &str) {
        let mut users = self.users.borrow_mut();
        let (_, user) = users.entry(name);
        self.remember_known(user, name, "");
        drop(users);
        self.commit_due.notify();
    }
}
