// The web console's end of the sealed admin channel (docs/PROTOCOL.md, RMKX
// and RMSG): an ECDH P-256 exchange with the HSM, checked against the HSM's
// signature by its TLS server key, then every Excrypt frame sealed with
// AES-256-GCM here, in the browser, so that the guardian relaying it
// (POST /api/devices/{id}/admin) sees only ciphertext. WebCrypto only, no
// dependencies; keys are non-extractable CryptoKeys and are never logged.

const LABEL = 'keyhold remote manage v1';
const INFO_C2S = 'keyhold rm c2s v1';
const INFO_S2C = 'keyhold rm s2c v1';
const AAD = 'RMSG';
const POINT_LEN = 65;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });
const subtle = () => {
  if (!globalThis.crypto || !globalThis.crypto.subtle)
    throw new Error('WebCrypto is not available (the console needs HTTPS)');
  return globalThis.crypto.subtle;
};

// ---- helpers ---------------------------------------------------------------

// Uppercase hex of bytes (Uint8Array, ArrayBuffer or a typed array).
export function hex(bytes) {
  const b = bytes instanceof Uint8Array ? bytes
    : ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    : new Uint8Array(bytes);
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s.toUpperCase();
}

// Bytes of a hex string (either case); throws on anything else.
export function unhex(str) {
  if (typeof str !== 'string' || str.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/.test(str))
    throw new Error('not a hex string');
  const out = new Uint8Array(str.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(str.substr(2 * i, 2), 16);
  return out;
}

// Hex of a text's UTF-8 bytes (for PW, NP, CN ... fields).
export function hexText(str) {
  return hex(utf8.encode(str));
}

// The value of tag in a frame ("[AOCMND;TGvalue;...]"), or null.
export function field(frameText, tag) {
  if (typeof frameText !== 'string' || !frameText.startsWith('[AO') || !frameText.endsWith(']'))
    return null;
  const parts = frameText.slice(1, -1).split(';');
  for (let i = 1; i < parts.length; i++)  // parts[0] is "AO" + the command
    if (parts[i].length >= 2 && parts[i].slice(0, 2) === tag) return parts[i].slice(2);
  return null;
}

// An ERRO frame as an Error ("AUTH_FAILED"-style code and the HSM's text).
function erroError(frame, what) {
  const code = field(frame, 'EC'), text = field(frame, 'ET');
  const e = new Error(`${what}: the HSM answered error ${code}${text ? ': ' + text : ''}`);
  e.code = code === null ? null : Number(code);
  e.frame = frame;
  return e;
}

function concat(...arrays) {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let off = 0;
  for (const a of arrays) { out.set(a, off); off += a.length; }
  return out;
}

// Does needle occur in haystack (the certificate holds the signing key)?
function contains(haystack, needle) {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

// 00000000 || counter, 8 bytes big-endian.
function nonce(counter) {
  const iv = new Uint8Array(12);
  new DataView(iv.buffer).setBigUint64(4, counter, false);
  return iv;
}

async function sha256(bytes) {
  return new Uint8Array(await subtle().digest('SHA-256', bytes));
}

// ---- the session -------------------------------------------------------------

export class RemoteSession {
  #api; #path; #fp; #cert; #kc2s; #ks2c;
  #tx = 0n; #rx = 0n;
  #queue = Promise.resolve();
  #broken = null;  // why the channel can carry nothing more, or null

  constructor(token, api, deviceId, fp, cert, kc2s, ks2c) {
    if (token !== OPEN) throw new Error('use RemoteSession.open(api, deviceId)');
    this.#api = api;
    this.#path = `/api/devices/${encodeURIComponent(deviceId)}/admin`;
    this.#fp = fp;
    this.#cert = cert;
    this.#kc2s = kc2s;
    this.#ks2c = ks2c;
  }

  // RMKX: a fresh ECDH key, the HSM's signed point checked with SP, the
  // two directions' AES-256-GCM keys derived.
  static async open(api, deviceId) {
    const s = subtle();
    const mine = await s.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
    const cpk = new Uint8Array(await s.exportKey('raw', mine.publicKey));
    if (cpk.length !== POINT_LEN) throw new Error('unexpected ECDH public key length');
    const path = `/api/devices/${encodeURIComponent(deviceId)}/admin`;
    const ans = await api('POST', path, { frame: `[AORMKX;PK${hex(cpk)};]` });
    const frame = ans && ans.frame;
    if (typeof frame !== 'string') throw new Error('RMKX: no frame in the answer');
    if (frame.startsWith('[AOERRO;')) throw erroError(frame, 'RMKX');
    if (!frame.startsWith('[AORMKX;') || field(frame, 'BB') !== 'Y')
      throw new Error('RMKX: not an RMKX answer');
    const need = (t) => {
      const v = field(frame, t);
      if (v === null) throw new Error(`RMKX: the answer lacks ${t}`);
      return v;
    };
    const spk = unhex(need('PK')), sig = unhex(need('SG')), sp = unhex(need('SP'));
    const ce = unhex(need('CE')), alg = need('SA');
    if (spk.length !== POINT_LEN || spk[0] !== 4) throw new Error('RMKX: PK is not a P-256 point');

    // the HSM's point must be signed by the key it serves TLS with
    const m = concat(utf8.encode(LABEL), cpk, spk);
    let key, params;
    if (alg === 'ES256') {
      key = await s.importKey('spki', sp, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
      params = { name: 'ECDSA', hash: 'SHA-256' };
    } else if (alg === 'RS256') {
      key = await s.importKey('spki', sp, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false,
        ['verify']);
      params = { name: 'RSASSA-PKCS1-v1_5' };
    } else {
      throw new Error(`RMKX: unknown signature algorithm ${alg}`);
    }
    if (!(await s.verify(params, key, sig, m)))
      throw new Error('RMKX: the HSM\'s signature does not verify: do not use this channel');
    if (!contains(ce, sp))
      throw new Error('RMKX: the certificate does not hold the signing key');

    const theirs = await s.importKey('raw', spk, { name: 'ECDH', namedCurve: 'P-256' }, false, []);
    const z = new Uint8Array(await s.deriveBits({ name: 'ECDH', public: theirs }, mine.privateKey,
      256));
    const ikm = await s.importKey('raw', z, 'HKDF', false, ['deriveKey']);
    z.fill(0);
    const salt = await sha256(m);
    const derive = (info, usage) => s.deriveKey(
      { name: 'HKDF', hash: 'SHA-256', salt, info: utf8.encode(info) }, ikm,
      { name: 'AES-GCM', length: 256 }, false, [usage]);
    const kc2s = await derive(INFO_C2S, 'encrypt');
    const ks2c = await derive(INFO_S2C, 'decrypt');
    const fp = hex(await sha256(sp));
    return new RemoteSession(OPEN, api, deviceId, fp, ce, kc2s, ks2c);
  }

  // Hex SHA-256 of the HSM's server key (SubjectPublicKeyInfo): what the
  // operator compares and the console pins per device.
  get fingerprint() {
    return this.#fp;
  }

  // The HSM's server certificate (DER).
  get certificate() {
    return this.#cert.slice();
  }

  // One sealed round trip: frameText (a whole Excrypt frame) to the HSM,
  // its answer frame (ERRO included) back. Calls run one after another.
  call(frameText) {
    const run = this.#queue.then(() => this.#call(frameText));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #call(frameText) {
    if (this.#broken) throw new Error(`the sealed channel is closed: ${this.#broken}`);
    if (typeof frameText !== 'string' || !frameText.startsWith('[AO') || !frameText.endsWith(']'))
      throw new Error('call: a whole Excrypt frame, "[AO....;...]"');
    const s = subtle();
    let pt;
    try {
      const ct = new Uint8Array(await s.encrypt(
        { name: 'AES-GCM', iv: nonce(this.#tx), additionalData: utf8.encode(AAD), tagLength: 128 },
        this.#kc2s, utf8.encode(frameText)));
      // the HSM counts this one once it opens it, whatever happens next
      this.#tx++;
      const ans = await this.#api('POST', this.#path, { frame: `[AORMSG;CT${hex(ct)};]` });
      const frame = ans && ans.frame;
      if (typeof frame !== 'string') throw new Error('RMSG: no frame in the answer');
      if (frame.startsWith('[AOERRO;')) throw erroError(frame, 'RMSG');
      const back = field(frame, 'CT');
      if (!frame.startsWith('[AORMSG;') || back === null) throw new Error('RMSG: not an RMSG answer');
      pt = new Uint8Array(await s.decrypt(
        { name: 'AES-GCM', iv: nonce(this.#rx), additionalData: utf8.encode(AAD), tagLength: 128 },
        this.#ks2c, unhex(back)));
      this.#rx++;
    } catch (e) {
      // a failed round trip leaves the two counters unknown: start again
      this.#broken = e.message;
      throw e;
    }
    const text = fromUtf8.decode(pt);
    pt.fill(0);
    return text;
  }

  // Ends the guardian's connection to the HSM (and with it the channel).
  async close() {
    this.#broken = this.#broken || 'closed';
    this.#kc2s = this.#ks2c = null;
    await this.#api('DELETE', this.#path, undefined);
  }
}

const OPEN = Symbol('RemoteSession.open');
