// What the logged-in user may do in a channel's chat panel, from
// GET /api/channels/{name}/chat/me ({moderator, broadcaster, banned, timed_out_until,
// settings}): per-message actions (ChatPanel.actionsFor) and why sending is off.
//
// Everyone logged in may report a message (POST .../chat/reports {message_id}).
// Moderators (the broadcaster, appointed moderators, admins) also get, on every message:
// delete (DELETE .../chat/messages/{id}), time out for 10 min and ban (POST .../chat/bans
// {user: username | participant: guest participant id, duration_s?}), and a link to the
// moderation panel /moderation/{name}. A guest in a channel without guests sees "Log in
// to chat"; a banned or timed-out user sees that before typing.

import { ApiError, api, el } from "./api.js";

export const TIMEOUT_S = 600;

/** The target of a ban or time-out for the sender of ``message``: {user} or {participant}. */
export function banTarget(message) {
  const from = message.from ?? {};
  return from.user ? { user: from.name } : { participant: from.id };
}

function chatPath(channel) {
  return `/api/channels/${encodeURIComponent(channel)}/chat`;
}

function problemText(err) {
  if (err instanceof ApiError) return err.problem?.detail || err.problem?.title || err.message;
  return err?.message || String(err);
}

/** GET .../chat/me; null when it cannot be read (no such endpoint yet, network). */
export async function chatRole(channel) {
  try {
    return await api(`${chatPath(channel)}/me`, { login: "optional" });
  } catch {
    return null;
  }
}

/**
 * Wire ``panel`` (a ChatPanel) to ``channel`` for ``user`` (the logged-in user or null).
 * Returns the chat/me answer (or null).
 */
export async function enableChatActions(panel, channel, user) {
  panel.setUser(user);
  const me = await chatRole(channel);
  const moderator = Boolean(me?.moderator);
  panel.container.dataset.moderator = String(moderator);
  if (me?.banned) panel.refused("banned");
  else if (me?.timed_out_until) {
    const left = (Date.parse(me.timed_out_until) - Date.now()) / 1000;
    if (left > 0) panel.refused("timed_out", "", left);
  } else if (!user && me?.settings && me.settings.guests_allowed === false) {
    panel.refused("guests_off");
  }
  if (moderator) {
    panel.tools.replaceChildren(el("a", { href: `/moderation/${encodeURIComponent(channel)}`,
      className: "button small", "data-testid": "chat-moderation-link" }, "Moderation"));
  }
  if (!user) return me;
  const path = chatPath(channel);
  panel.actionsFor = (message) => {
    const mine = (message.from?.user && message.from.user === user.id);
    const actions = [];
    if (moderator) {
      actions.push({
        label: "Delete", testid: "chat-delete",
        run: async (m) => {
          await call(() => api(`${path}/messages/${encodeURIComponent(m.id)}`, { method: "DELETE", login: "optional" }));
          return "Message deleted.";
        },
      });
      if (!mine) {
        actions.push({
          label: "Time out 10 min", testid: "chat-timeout",
          run: async (m) => {
            await call(() => api(`${path}/bans`, { method: "POST", login: "optional",
              body: { ...banTarget(m), duration_s: TIMEOUT_S, reason: "timed out from the chat" } }));
            return `${m.from?.name ?? "They"} is timed out for 10 min.`;
          },
        });
        actions.push({
          label: "Ban", testid: "chat-ban",
          run: async (m) => {
            await call(() => api(`${path}/bans`, { method: "POST", login: "optional",
              body: { ...banTarget(m), reason: "banned from the chat" } }));
            return `${m.from?.name ?? "They"} is banned from this chat.`;
          },
        });
      }
    }
    if (!mine) {
      actions.push({
        label: "Report", testid: "chat-report",
        run: async (m) => {
          await call(() => api(`${path}/reports`, { method: "POST", login: "optional", body: { message_id: m.id } }));
          return "Reported to the moderators. Thank you.";
        },
      });
    }
    return actions;
  };
  // Messages already shown get their actions button now.
  for (const item of panel.items.values()) {
    if (!item.querySelector("button.chat-more")) {
      item.append(el("button", { type: "button", className: "chat-more", "data-testid": "chat-more",
        "aria-label": `Actions for the message from ${item.message?.from?.name ?? "anonymous"}`,
        "aria-expanded": "false" }, "⋯"));
    }
  }
  return me;
}

async function call(fn) {
  try {
    return await fn();
  } catch (err) {
    throw new Error(problemText(err));
  }
}
