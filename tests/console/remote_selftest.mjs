// remote.js against an HSM simulated here with node:crypto (written from
// docs/PROTOCOL.md, RMKX and RMSG), for what one real HSM does not show:
// both signature algorithms (ES256 and RS256 server keys), a signature that
// does not verify, and a certificate that does not hold the signing key.
// usage: node remote_selftest.mjs REMOTE_JS
import * as nc from 'node:crypto';
import { pathToFileURL } from 'node:url';

const { RemoteSession, field, hex, unhex } = await import(pathToFileURL(process.argv[2]).href);
const check = (ok, what) => {
  if (!ok) throw new Error(`FAIL: ${what}`);
  console.log(`ok: ${what}`);
};

// A fake device: answers RMKX and RMSG (ECHO inside) like the HSM; a
// tamper hook may change the RMKX answer.
function fakeHsm(kind, tamper) {
  const server = kind === 'rsa'
    ? nc.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : nc.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = server.publicKey.export({ type: 'spki', format: 'der' });
  // a stand-in "certificate": any DER that holds the SPKI will do here
  const cert = Buffer.concat([Buffer.from([0x30, 0x82, 0, 0]), spki, Buffer.from('cert')]);
  let k = null, rx = 0n, tx = 0n;
  const iv = (n) => { const b = Buffer.alloc(12); b.writeBigUInt64BE(n, 4); return b; };
  return async (method, path, body) => {
    if (method === 'DELETE') return null;
    const f = body.frame;
    if (f.startsWith('[AORMKX;')) {
      const cpk = Buffer.from(unhex(field(f, 'PK')));
      const ecdh = nc.createECDH('prime256v1');
      const spk = ecdh.generateKeys();
      const z = ecdh.computeSecret(cpk);
      const m = Buffer.concat([Buffer.from('keyhold remote manage v1'), cpk, spk]);
      const salt = nc.createHash('sha256').update(m).digest();
      k = {
        c2s: Buffer.from(nc.hkdfSync('sha256', z, salt, 'keyhold rm c2s v1', 32)),
        s2c: Buffer.from(nc.hkdfSync('sha256', z, salt, 'keyhold rm s2c v1', 32)),
      };
      rx = tx = 0n;
      const sig = nc.sign('sha256', m, kind === 'rsa' ? server.privateKey
        : { key: server.privateKey, dsaEncoding: 'ieee-p1363' });
      const a = { PK: hex(spk), SA: kind === 'rsa' ? 'RS256' : 'ES256', SG: hex(sig),
        SP: hex(spki), CE: hex(cert) };
      if (tamper) tamper(a);
      return { frame: `[AORMKX;BBY;PK${a.PK};SA${a.SA};SG${a.SG};SP${a.SP};CE${a.CE};]` };
    }
    const ct = Buffer.from(unhex(field(f, 'CT')));
    const d = nc.createDecipheriv('aes-256-gcm', k.c2s, iv(rx));
    d.setAAD(Buffer.from('RMSG'));
    d.setAuthTag(ct.subarray(ct.length - 16));
    const pt = Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString();
    rx++;
    const inner = pt.replace(/^\[AOECHO;/, '[AOECHO;BBY;');
    const e = nc.createCipheriv('aes-256-gcm', k.s2c, iv(tx));
    e.setAAD(Buffer.from('RMSG'));
    const out = Buffer.concat([e.update(inner), e.final(), e.getAuthTag()]);
    tx++;
    return { frame: `[AORMSG;BBY;CT${hex(out)};]` };
  };
}

for (const kind of ['ec', 'rsa']) {
  const rs = await RemoteSession.open(fakeHsm(kind), 7);
  check(/^[0-9A-F]{64}$/.test(rs.fingerprint), `${kind}: open, fingerprint`);
  for (let i = 0; i < 3; i++)
    check(field(await rs.call(`[AOECHO;AGx${i};]`), 'AG') === `x${i}`, `${kind}: sealed ECHO ${i}`);
  await rs.close();
  const rejects = async (tamper, what) => {
    let threw = false;
    try { await RemoteSession.open(fakeHsm(kind, tamper), 7); } catch { threw = true; }
    check(threw, `${kind}: refused: ${what}`);
  };
  await rejects((a) => { a.SG = a.SG.slice(0, -2) + (a.SG.endsWith('00') ? '01' : '00'); },
    'a signature that does not verify');
  await rejects((a) => { const p = unhex(a.PK); p[40] ^= 1; a.PK = hex(p); }, 'another HSM point');
  await rejects((a) => { a.CE = hex(Buffer.from('not the certificate')); },
    'a certificate without the key');
  await rejects((a) => { a.SA = 'HS256'; }, 'an unknown algorithm');
}
console.log('remote_selftest: all checks passed');
