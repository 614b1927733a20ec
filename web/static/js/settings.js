// Settings: the profile (display name, email, bio) and the password, both through
// PATCH /api/users/me (a new password needs the current one).

import { api, showError } from "./api.js";
import { requireUser } from "./shell.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const profile = $("profile-form");
const password = $("password-form");

function say(target, text, ok = true) {
  target.textContent = text;
  target.className = ok ? "ok" : "error";
  target.hidden = false;
}

function fill(user) {
  $("settings-username").textContent = user.username;
  profile.elements.display_name.value = user.display_name ?? "";
  profile.elements.email.value = user.email ?? "";
  profile.elements.bio.value = user.bio ?? "";
}

async function save(form, result, body, done) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  result.hidden = true;
  try {
    const user = await api("/api/users/me", { method: "PATCH", body });
    done(user);
  } catch (err) {
    showError(result, err);
    result.className = "error";
  } finally {
    button.disabled = false;
  }
}

async function init() {
  fill(await requireUser());
  profile.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(profile);
    const body = { display_name: String(data.get("display_name")).trim(), bio: String(data.get("bio")) };
    const email = String(data.get("email")).trim();
    if (email) body.email = email;
    save(profile, $("profile-result"), body, (user) => { fill(user); say($("profile-result"), "Profile saved."); });
  });
  password.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!password.reportValidity()) return;
    const data = new FormData(password);
    const body = { current_password: String(data.get("current_password")), new_password: String(data.get("new_password")) };
    save(password, $("password-result"), body, () => { password.reset(); say($("password-result"), "Password changed."); });
  });
}

init();
