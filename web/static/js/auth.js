// The log-in and sign-up pages: POST /api/users/login or /api/users/register with
// "X-Relaycast-Client: web", so the API answers with the session cookies (no tokens
// in the body), then go to ?next= (a path on this origin) or the home page.

import { ApiError, api, safeNext, showError } from "./api.js";

const form = document.querySelector("form[data-action]");
const error = form.querySelector('[data-testid="form-error"]');
const submit = form.querySelector('[data-testid="submit"]');
const action = form.dataset.action; // "login" | "register"
const next = safeNext(new URLSearchParams(location.search).get("next"));

function body() {
  const data = Object.fromEntries(new FormData(form));
  const out = { username: String(data.username ?? "").trim(), password: String(data.password ?? "") };
  if (action === "register") {
    out.username = out.username.toLowerCase();
    for (const key of ["display_name", "email"]) {
      const value = String(data[key] ?? "").trim();
      if (value) out[key] = value;
    }
  }
  return out;
}

function invalid() {
  for (const input of form.querySelectorAll("input")) {
    if (!input.checkValidity()) {
      input.setAttribute("aria-invalid", "true");
      const label = input.closest("label")?.firstChild?.textContent?.trim() || input.name;
      error.textContent = `${label}: ${input.validationMessage}`;
      error.hidden = false;
      input.focus();
      return true;
    }
    input.removeAttribute("aria-invalid");
  }
  return false;
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.hidden = true;
  if (invalid()) return;
  submit.disabled = true;
  try {
    await api(`/api/users/${action}`, { method: "POST", body: body(), login: "optional", web: true });
    location.assign(new URL(next, location.origin).href);
  } catch (err) {
    if (err instanceof ApiError && err.status === 429) {
      error.textContent = "Too many attempts. Wait a moment and try again.";
      error.hidden = false;
    } else {
      showError(error, err);
    }
    submit.disabled = false;
  }
});
