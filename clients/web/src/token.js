// Access tokens for a screen that stays on air longer than its token lives.
//
// A host screen beside the camera runs for the whole stream, often longer than
// a token's lifetime. Given `?token_url=…` (an endpoint of the merchant's own
// backend that answers with a fresh token for the signed-in user), the page
// renews its token over the open connection before it expires (protocol §5.3)
// and fetches a new one before reconnecting with an expired one, so the screen
// never goes dark for a token. Without a token URL nothing changes: the token
// in the page's URL is used as it is.

/** The `exp` claim of a JWT in milliseconds, or null. Read, not verified: the gateway verifies. */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return Number.isFinite(json.exp) ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * When to renew, in ms from `now`: a margin before expiry of a fifth of the
 * remaining lifetime, at most 30 s and at least 1 s, so an hour's token is
 * renewed 30 s early and a 5 s test token 1 s early.
 */
export function renewDelay(expiresAt, now) {
  const left = expiresAt - now;
  const margin = Math.min(30_000, Math.max(1_000, left / 5));
  return Math.max(0, left - margin);
}

/** What a token endpoint answered: `{"token": "…"}` or the token as plain text. */
export function parseTokenResponse(text) {
  const body = (text || "").trim();
  if (body.startsWith("{")) {
    const json = JSON.parse(body);
    if (typeof json.token === "string" && json.token) return json.token;
    throw new Error("token endpoint answered JSON without a token");
  }
  if (!body) throw new Error("token endpoint answered nothing");
  return body;
}

/** Fetch from `url` with the page's cookies (the merchant's session), never from cache. */
export function fetchToken(url, fetchImpl = globalThis.fetch) {
  return async () => {
    const response = await fetchImpl(url, { credentials: "include", cache: "no-store" });
    if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
    return parseTokenResponse(await response.text());
  };
}

/**
 * The screen's current token and how to get the next one.
 *
 * `fetcher` is null when the page has no token URL: then the token never
 * changes and nothing is ever fetched.
 */
export class TokenSource {
  constructor(token = "", fetcher = null) {
    this.token = token;
    this.fetcher = fetcher;
    this._inFlight = null;
  }

  get renewable() {
    return this.fetcher !== null;
  }

  get expiresAt() {
    return tokenExpiry(this.token);
  }

  /** True when the token is missing or expires within `slackMs` of `now` and a new one can be fetched. */
  stale(now, slackMs = 2_000) {
    if (!this.renewable) return false;
    if (!this.token) return true;
    const exp = this.expiresAt;
    return exp !== null && exp - now <= slackMs;
  }

  /** A fresh token; concurrent callers share one request. */
  refresh() {
    if (!this.renewable) return Promise.resolve(this.token);
    if (this._inFlight === null) {
      this._inFlight = Promise.resolve()
        .then(() => this.fetcher())
        .then((token) => {
          this.token = token;
          return token;
        })
        .finally(() => {
          this._inFlight = null;
        });
    }
    return this._inFlight;
  }
}
