/*
 * libkeyhold-pkcs11.so through Java's SunPKCS11 provider: compiled and run by
 * tests/integration/test_p11_java.sh against a real HSM.
 *
 *   java KeyholdP11Test CONFIG PIN [ALIAS]
 *
 * CONFIG is a SunPKCS11 configuration file (name, library, slot), PIN the
 * crypto operator's password, ALIAS (optional) a key pair that keytool made
 * on the token before (its certificate is checked and its key signs).
 * Prints one line per check, "PASS name", "FAIL name: why" or "SKIP name:
 * why" (something SunPKCS11 does not offer), then "N passed, N failed, N
 * skipped". Exit status 1 if any check failed, 2 on a usage error.
 *
 * Every result made on the HSM is checked against Java's own software
 * providers where a public key allows it (signatures verified with SunRsaSign
 * / SunEC, RSA encrypted with SunJCE and decrypted on the HSM), and both
 * ways on the HSM (sign then verify, encrypt then decrypt); tampered data must
 * be refused.
 */
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.AuthProvider;
import java.security.Key;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.security.interfaces.ECPublicKey;
import java.security.interfaces.RSAPublicKey;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.Mac;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;

public final class KeyholdP11Test {
    private static int passed, failed, skipped;

    /** A check: throws on failure, SkipException when the provider lacks the algorithm. */
    interface Check {
        void run() throws Exception;
    }

    static final class SkipException extends Exception {
        SkipException(String why) {
            super(why);
        }
    }

    static void check(String name, Check c) {
        try {
            c.run();
            passed++;
            System.out.println("PASS " + name);
        } catch (SkipException e) {
            skipped++;
            System.out.println("SKIP " + name + ": " + e.getMessage());
        } catch (Throwable t) {
            failed++;
            StringBuilder why = new StringBuilder(t.toString());
            for (Throwable c2 = t.getCause(); c2 != null; c2 = c2.getCause())
                why.append(" <- ").append(c2);
            System.out.println("FAIL " + name + ": " + why);
            if (System.getenv("KH_JAVA_TRACE") != null)
                t.printStackTrace(System.out);
        }
        System.out.flush();
    }

    static void require(boolean ok, String what) {
        if (!ok)
            throw new AssertionError(what);
    }

    static Provider p11;
    static final SecureRandom RNG = new SecureRandom();

    static byte[] data(int n) {
        byte[] b = new byte[n];
        RNG.nextBytes(b);
        return b;
    }

    /** The provider's service, or a skip when SunPKCS11 does not offer it for this token. */
    static void need(String type, String alg) throws SkipException {
        if (p11.getService(type, alg) == null)
            throw new SkipException(type + "." + alg + " not offered by " + p11.getName());
    }

    static byte[] sign(String alg, PrivateKey k, byte[] msg) throws Exception {
        Signature s = Signature.getInstance(alg, p11);
        s.initSign(k);
        s.update(msg);
        return s.sign();
    }

    /** Verify on the HSM; the tampered message must not verify. */
    static void verifyP11(String alg, PublicKey k, byte[] msg, byte[] sig) throws Exception {
        Signature v = Signature.getInstance(alg, p11);
        v.initVerify(k);
        v.update(msg);
        require(v.verify(sig), alg + ": the HSM does not verify its own signature");
        byte[] bad = msg.clone();
        bad[0] ^= 1;
        v.initVerify(k);
        v.update(bad);
        require(!v.verify(sig), alg + ": the HSM verifies a signature over other data");
    }

    /** The public key as Java's software providers see it (from its encoding). */
    static PublicKey soft(PublicKey k) throws Exception {
        String alg = k.getAlgorithm();
        byte[] enc = k.getEncoded();
        require(enc != null && enc.length > 0, "public key has no encoding");
        return KeyFactory.getInstance(alg.equals("EC") ? "EC" : alg).generatePublic(new X509EncodedKeySpec(enc));
    }

    /** Verify with a software provider (not the HSM). */
    static void verifySoft(String alg, PublicKey k, byte[] msg, byte[] sig, java.security.spec.AlgorithmParameterSpec ps)
            throws Exception {
        Signature v = Signature.getInstance(alg); // the JDK's own providers come first
        require(!v.getProvider().getName().startsWith("SunPKCS11"), "software verifier is the HSM");
        if (ps != null)
            v.setParameter(ps);
        v.initVerify(soft(k));
        v.update(msg);
        require(v.verify(sig), alg + ": " + v.getProvider().getName() + " does not verify the HSM's signature");
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2 || args.length > 3) {
            System.err.println("usage: java KeyholdP11Test CONFIG PIN [ALIAS]");
            System.exit(2);
        }
        String cfg = args[0];
        char[] pin = Files.readString(Path.of(args[1])).toCharArray();
        String keytoolAlias = args.length > 2 ? args[2] : null;

        check("provider: SunPKCS11 configured with the module", () -> {
            Provider base = Security.getProvider("SunPKCS11");
            require(base != null, "no SunPKCS11 provider in this JDK");
            p11 = base.configure(cfg);
            require(p11.getName().equals("SunPKCS11-Keyhold"), "provider name " + p11.getName());
            Security.addProvider(p11);
            System.out.println("    " + p11.getInfo());
        });
        if (p11 == null) {
            summary();
            return;
        }

        check("login: a wrong PIN is refused", () -> {
            KeyStore ks = KeyStore.getInstance("PKCS11", p11);
            try {
                ks.load(null, "not-the-pin".toCharArray());
                throw new AssertionError("a wrong PIN was accepted");
            } catch (java.io.IOException e) {
                // SunPKCS11 wraps CKR_PIN_INCORRECT in a LoginException, in an
                // UnrecoverableKeyException, in the IOException
                StringBuilder chain = new StringBuilder();
                for (Throwable t = e; t != null; t = t.getCause())
                    chain.append(" <- ").append(t);
                require(chain.indexOf("CKR_PIN_INCORRECT") >= 0, "expected CKR_PIN_INCORRECT, got" + chain);
            }
        });

        final KeyStore[] ksh = new KeyStore[1];
        check("login: KeyStore.load with the PIN (C_Login)", () -> {
            KeyStore ks = KeyStore.getInstance("PKCS11", p11);
            ks.load(null, pin);
            ksh[0] = ks;
        });
        if (ksh[0] == null) {
            summary();
            return;
        }
        KeyStore ks = ksh[0];

        check("keystore: list aliases", () -> {
            List<String> al = Collections.list(ks.aliases());
            System.out.println("    aliases: " + al);
            if (keytoolAlias != null)
                require(al.contains(keytoolAlias), "keytool's alias " + keytoolAlias + " is not listed");
        });

        if (keytoolAlias != null) {
            check("keystore: keytool's key pair is a private key entry with its certificate", () -> {
                require(ks.isKeyEntry(keytoolAlias), keytoolAlias + " is not a key entry");
                Key k = ks.getKey(keytoolAlias, null);
                require(k instanceof PrivateKey && k.getAlgorithm().equals("EC"), "key " + k);
                Certificate c = ks.getCertificate(keytoolAlias);
                require(c instanceof X509Certificate, "no X.509 certificate for " + keytoolAlias);
                X509Certificate x = (X509Certificate) c;
                require(x.getSubjectX500Principal().getName().equals("CN=java"), "subject " + x.getSubjectX500Principal());
                x.verify(x.getPublicKey()); // self-signed by the HSM key, checked in software
                require(x.getPublicKey() instanceof ECPublicKey, "certificate key " + x.getPublicKey().getAlgorithm());
            });
            check("keystore: keytool's token key signs (SHA256withECDSA), certificate key verifies", () -> {
                PrivateKey k = (PrivateKey) ks.getKey(keytoolAlias, null);
                byte[] msg = "signed by the key keytool made".getBytes(StandardCharsets.UTF_8);
                byte[] sig = sign("SHA256withECDSA", k, msg);
                PublicKey pub = ks.getCertificate(keytoolAlias).getPublicKey();
                Signature v = Signature.getInstance("SHA256withECDSA");
                v.initVerify(pub);
                v.update(msg);
                require(v.verify(sig), "certificate key does not verify the token key's signature");
            });
        }

        check("random: SecureRandom PKCS11 (C_GenerateRandom)", () -> {
            need("SecureRandom", "PKCS11");
            SecureRandom r = SecureRandom.getInstance("PKCS11", p11);
            byte[] a = new byte[64], b = new byte[64];
            r.nextBytes(a);
            r.nextBytes(b);
            require(!Arrays.equals(a, b) && !Arrays.equals(a, new byte[64]), "random bytes repeat or are zero");
        });

        final KeyPair[] rsa = new KeyPair[1];
        check("keygen: RSA-2048 key pair (KeyPairGenerator)", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("RSA", p11);
            g.initialize(2048);
            KeyPair kp = g.generateKeyPair();
            require(kp.getPublic() instanceof RSAPublicKey, "public key " + kp.getPublic());
            RSAPublicKey pub = (RSAPublicKey) kp.getPublic();
            require(pub.getModulus().bitLength() == 2048, "modulus of " + pub.getModulus().bitLength() + " bits");
            require(pub.getPublicExponent().intValue() == 65537, "public exponent " + pub.getPublicExponent());
            require(kp.getPrivate().getEncoded() == null, "the private key's encoding left the HSM");
            rsa[0] = kp;
        });

        final KeyPair[] ecp = new KeyPair[1];
        check("keygen: EC P-256 key pair (KeyPairGenerator)", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("EC", p11);
            g.initialize(new ECGenParameterSpec("secp256r1"));
            KeyPair kp = g.generateKeyPair();
            require(kp.getPublic() instanceof ECPublicKey, "public key " + kp.getPublic());
            require(((ECPublicKey) kp.getPublic()).getParams().getCurve().getField().getFieldSize() == 256, "not 256 bits");
            ecp[0] = kp;
        });

        final KeyPair[] ec384 = new KeyPair[1];
        check("keygen: EC P-384 key pair (KeyPairGenerator)", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("EC", p11);
            g.initialize(new ECGenParameterSpec("secp384r1"));
            ec384[0] = g.generateKeyPair();
        });

        final SecretKey[] aes = new SecretKey[1];
        check("keygen: AES-256 key (KeyGenerator)", () -> {
            KeyGenerator g = KeyGenerator.getInstance("AES", p11);
            g.init(256);
            SecretKey k = g.generateKey();
            require(k.getAlgorithm().equals("AES"), "algorithm " + k.getAlgorithm());
            require(k.getEncoded() == null, "the AES key's value left the HSM");
            aes[0] = k;
        });

        final SecretKey[] aes128 = new SecretKey[1];
        check("keygen: AES-128 key (KeyGenerator)", () -> {
            KeyGenerator g = KeyGenerator.getInstance("AES", p11);
            g.init(128);
            aes128[0] = g.generateKey();
        });

        byte[] msg = "Keyhold through SunPKCS11: the quick brown fox".getBytes(StandardCharsets.UTF_8);

        if (rsa[0] != null) {
            KeyPair kp = rsa[0];
            for (String alg : new String[] {"SHA256withRSA", "SHA384withRSA", "SHA512withRSA"}) {
                check("sign: " + alg + " on the HSM, verified on the HSM and by SunRsaSign", () -> {
                    need("Signature", alg);
                    byte[] sig = sign(alg, kp.getPrivate(), msg);
                    require(sig.length == 256, "signature of " + sig.length + " bytes");
                    verifyP11(alg, kp.getPublic(), msg, sig);
                    verifySoft(alg, kp.getPublic(), msg, sig, null);
                    // PKCS#1 v1.5 is deterministic
                    require(Arrays.equals(sig, sign(alg, kp.getPrivate(), msg)), "two signatures differ");
                });
            }
            check("sign: SHA256withRSA over 1 MiB (multi-part update)", () -> {
                byte[] big = data(1 << 20);
                Signature s = Signature.getInstance("SHA256withRSA", p11);
                s.initSign(kp.getPrivate());
                for (int off = 0; off < big.length; off += 4096)
                    s.update(big, off, 4096);
                byte[] sig = s.sign();
                verifySoft("SHA256withRSA", kp.getPublic(), big, sig, null);
            });
            check("sign: RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32)", () -> {
                need("Signature", "RSASSA-PSS");
                PSSParameterSpec ps = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
                Signature s = Signature.getInstance("RSASSA-PSS", p11);
                s.setParameter(ps);
                s.initSign(kp.getPrivate());
                s.update(msg);
                byte[] sig = s.sign();
                Signature v = Signature.getInstance("RSASSA-PSS", p11);
                v.setParameter(ps);
                v.initVerify(kp.getPublic());
                v.update(msg);
                require(v.verify(sig), "the HSM does not verify its PSS signature");
                verifySoft("RSASSA-PSS", kp.getPublic(), msg, sig, ps);
            });
            check("sign: SHA256withRSASSA-PSS", () -> {
                need("Signature", "SHA256withRSASSA-PSS");
                PSSParameterSpec ps = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
                Signature s = Signature.getInstance("SHA256withRSASSA-PSS", p11);
                s.setParameter(ps);
                s.initSign(kp.getPrivate());
                s.update(msg);
                byte[] sig = s.sign();
                verifySoft("RSASSA-PSS", kp.getPublic(), msg, sig, ps);
            });
            check("cipher: RSA/ECB/PKCS1Padding, encrypted on the HSM and by SunJCE, decrypted on the HSM", () -> {
                need("Cipher", "RSA/ECB/PKCS1Padding");
                byte[] pt = data(100);
                Cipher e = Cipher.getInstance("RSA/ECB/PKCS1Padding", p11);
                e.init(Cipher.ENCRYPT_MODE, kp.getPublic());
                byte[] ct = e.doFinal(pt);
                Cipher d = Cipher.getInstance("RSA/ECB/PKCS1Padding", p11);
                d.init(Cipher.DECRYPT_MODE, kp.getPrivate());
                require(Arrays.equals(pt, d.doFinal(ct)), "HSM round trip differs");
                Cipher se = Cipher.getInstance("RSA/ECB/PKCS1Padding", "SunJCE");
                se.init(Cipher.ENCRYPT_MODE, soft(kp.getPublic()));
                byte[] sct = se.doFinal(pt);
                d.init(Cipher.DECRYPT_MODE, kp.getPrivate());
                require(Arrays.equals(pt, d.doFinal(sct)), "SunJCE's ciphertext decrypts to other data");
            });
            check("cipher: RSA/ECB/NoPadding (raw RSA), SunJCE encrypts, the HSM decrypts", () -> {
                need("Cipher", "RSA/ECB/NoPadding");
                byte[] pt = data(256);
                pt[0] = 0; // below the modulus
                Cipher se = Cipher.getInstance("RSA/ECB/NoPadding", "SunJCE");
                se.init(Cipher.ENCRYPT_MODE, soft(kp.getPublic()));
                byte[] ct = se.doFinal(pt);
                Cipher d = Cipher.getInstance("RSA/ECB/NoPadding", p11);
                d.init(Cipher.DECRYPT_MODE, kp.getPrivate());
                byte[] out = d.doFinal(ct);
                // SunPKCS11 may strip leading zero bytes: compare as numbers
                require(new java.math.BigInteger(1, out).equals(new java.math.BigInteger(1, pt)), "raw RSA decryption differs");
            });
            check("cipher: RSA/ECB/OAEPPadding (SHA-1), SunJCE encrypts, the HSM decrypts", () -> {
                need("Cipher", "RSA/ECB/OAEPPadding");
                byte[] pt = data(64);
                Cipher se = Cipher.getInstance("RSA/ECB/OAEPPadding", "SunJCE");
                se.init(Cipher.ENCRYPT_MODE, soft(kp.getPublic()));
                byte[] ct = se.doFinal(pt);
                Cipher d = Cipher.getInstance("RSA/ECB/OAEPPadding", p11);
                d.init(Cipher.DECRYPT_MODE, kp.getPrivate());
                require(Arrays.equals(pt, d.doFinal(ct)), "OAEP decryption differs");
            });
        }

        for (KeyPair kp : new KeyPair[] {ecp[0], ec384[0]}) {
            if (kp == null)
                continue;
            int bits = ((ECPublicKey) kp.getPublic()).getParams().getCurve().getField().getFieldSize();
            for (String alg : new String[] {"SHA256withECDSA", "SHA384withECDSA"}) {
                check("sign: " + alg + " with P-" + bits + " on the HSM, verified on the HSM and by SunEC", () -> {
                    need("Signature", alg);
                    byte[] sig = sign(alg, kp.getPrivate(), msg);
                    verifyP11(alg, kp.getPublic(), msg, sig);
                    verifySoft(alg, kp.getPublic(), msg, sig, null);
                });
            }
        }
        if (ecp[0] != null) {
            check("sign: NONEwithECDSA over a SHA-256 digest", () -> {
                need("Signature", "NONEwithECDSA");
                byte[] dg = java.security.MessageDigest.getInstance("SHA-256").digest(msg);
                byte[] sig = sign("NONEwithECDSA", ecp[0].getPrivate(), dg);
                verifySoft("SHA256withECDSA", ecp[0].getPublic(), msg, sig, null);
            });
        }

        if (aes[0] != null) {
            SecretKey k = aes[0];
            check("cipher: AES/GCM/NoPadding (12-byte IV, 128-bit tag, AAD), round trip", () -> {
                need("Cipher", "AES/GCM/NoPadding");
                byte[] iv = data(12), aad = "header".getBytes(StandardCharsets.UTF_8), pt = data(1000);
                Cipher e = Cipher.getInstance("AES/GCM/NoPadding", p11);
                e.init(Cipher.ENCRYPT_MODE, k, new GCMParameterSpec(128, iv));
                e.updateAAD(aad);
                byte[] ct = e.doFinal(pt);
                require(ct.length == pt.length + 16, "ciphertext of " + ct.length + " bytes");
                Cipher d = Cipher.getInstance("AES/GCM/NoPadding", p11);
                d.init(Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv));
                d.updateAAD(aad);
                require(Arrays.equals(pt, d.doFinal(ct)), "decryption differs");
                byte[] bad = ct.clone();
                bad[5] ^= 1;
                d.init(Cipher.DECRYPT_MODE, k, new GCMParameterSpec(128, iv));
                d.updateAAD(aad);
                try {
                    d.doFinal(bad);
                    throw new AssertionError("a tampered GCM ciphertext decrypted");
                } catch (AEADBadTagException expected) {
                    // the tag does not match
                }
            });
            check("cipher: AES/GCM/NoPadding in parts (update, update, doFinal)", () -> {
                need("Cipher", "AES/GCM/NoPadding");
                byte[] iv = data(12), pt = data(70000);
                Cipher e = Cipher.getInstance("AES/GCM/NoPadding", p11);
                e.init(Cipher.ENCRYPT_MODE, k, new GCMParameterSpec(96, iv));
                java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
                for (int off = 0; off < pt.length; off += 30000) {
                    byte[] o = e.update(pt, off, Math.min(30000, pt.length - off));
                    if (o != null)
                        out.write(o);
                }
                out.write(e.doFinal());
                byte[] ct = out.toByteArray();
                require(ct.length == pt.length + 12, "ciphertext of " + ct.length + " bytes");
                Cipher d = Cipher.getInstance("AES/GCM/NoPadding", p11);
                d.init(Cipher.DECRYPT_MODE, k, new GCMParameterSpec(96, iv));
                require(Arrays.equals(pt, d.doFinal(ct)), "decryption differs");
            });
            check("cipher: AES/CBC/PKCS5Padding round trip", () -> {
                need("Cipher", "AES/CBC/PKCS5Padding");
                byte[] iv = data(16), pt = data(1001);
                Cipher e = Cipher.getInstance("AES/CBC/PKCS5Padding", p11);
                e.init(Cipher.ENCRYPT_MODE, k, new IvParameterSpec(iv));
                byte[] ct = e.doFinal(pt);
                require(ct.length == 1008, "ciphertext of " + ct.length + " bytes");
                Cipher d = Cipher.getInstance("AES/CBC/PKCS5Padding", p11);
                d.init(Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv));
                require(Arrays.equals(pt, d.doFinal(ct)), "decryption differs");
            });
            check("cipher: AES/CTR/NoPadding round trip", () -> {
                need("Cipher", "AES/CTR/NoPadding");
                byte[] iv = data(16), pt = data(333);
                iv[15] = 0; iv[14] = 0; // no counter wrap within the data
                Cipher e = Cipher.getInstance("AES/CTR/NoPadding", p11);
                e.init(Cipher.ENCRYPT_MODE, k, new IvParameterSpec(iv));
                byte[] ct = e.doFinal(pt);
                Cipher d = Cipher.getInstance("AES/CTR/NoPadding", p11);
                d.init(Cipher.DECRYPT_MODE, k, new IvParameterSpec(iv));
                require(Arrays.equals(pt, d.doFinal(ct)), "decryption differs");
            });
            if (aes128[0] != null) {
                check("cipher: AES/ECB/NoPadding, two keys give different ciphertexts", () -> {
                    need("Cipher", "AES/ECB/NoPadding");
                    byte[] pt = data(32);
                    Cipher e = Cipher.getInstance("AES/ECB/NoPadding", p11);
                    e.init(Cipher.ENCRYPT_MODE, k);
                    byte[] c1 = e.doFinal(pt);
                    e.init(Cipher.ENCRYPT_MODE, aes128[0]);
                    byte[] c2 = e.doFinal(pt);
                    require(!Arrays.equals(c1, c2), "AES-256 and AES-128 keys encrypt alike");
                    Cipher d = Cipher.getInstance("AES/ECB/NoPadding", p11);
                    d.init(Cipher.DECRYPT_MODE, aes128[0]);
                    require(Arrays.equals(pt, d.doFinal(c2)), "decryption differs");
                });
            }
            check("mac: AESCMAC", () -> {
                need("Mac", "AESCMAC");
                Mac m = Mac.getInstance("AESCMAC", p11);
                m.init(k);
                byte[] t1 = m.doFinal(msg);
                require(t1.length == 16 && Arrays.equals(t1, m.doFinal(msg)), "CMAC not 16 stable bytes");
            });
        }

        check("mac: HmacSHA256 with a generated key", () -> {
            need("Mac", "HmacSHA256");
            need("KeyGenerator", "HmacSHA256");
            KeyGenerator g = KeyGenerator.getInstance("HmacSHA256", p11);
            g.init(256);
            SecretKey k = g.generateKey();
            Mac m = Mac.getInstance("HmacSHA256", p11);
            m.init(k);
            byte[] t1 = m.doFinal(msg);
            byte[] t2 = m.doFinal(msg);
            require(t1.length == 32 && Arrays.equals(t1, t2), "HMAC not 32 stable bytes");
            m.update(msg, 0, 10);
            m.update(msg, 10, msg.length - 10);
            require(Arrays.equals(t1, m.doFinal()), "multi-part HMAC differs");
        });

        check("digest: SHA-256 on the token equals the JDK's", () -> {
            need("MessageDigest", "SHA-256");
            byte[] a = java.security.MessageDigest.getInstance("SHA-256", p11).digest(msg);
            byte[] b = java.security.MessageDigest.getInstance("SHA-256", "SUN").digest(msg);
            require(Arrays.equals(a, b), "digests differ");
        });

        if (aes[0] != null) {
            check("keystore: an AES key stored as a token object, found again, deleted", () -> {
                String alias = "java-aes-" + Long.toHexString(RNG.nextLong());
                ks.setEntry(alias, new KeyStore.SecretKeyEntry(aes[0]), null);
                KeyStore again = KeyStore.getInstance("PKCS11", p11);
                again.load(null, pin);
                require(Collections.list(again.aliases()).contains(alias), "alias " + alias + " not found again");
                SecretKey tk = (SecretKey) again.getKey(alias, null);
                require(tk != null && tk.getAlgorithm().equals("AES"), "token key " + tk);
                // the token copy is the same key: what the session key encrypted, it decrypts
                byte[] iv = data(12), pt = data(48);
                Cipher e = Cipher.getInstance("AES/GCM/NoPadding", p11);
                e.init(Cipher.ENCRYPT_MODE, aes[0], new GCMParameterSpec(128, iv));
                byte[] ct = e.doFinal(pt);
                Cipher d = Cipher.getInstance("AES/GCM/NoPadding", p11);
                d.init(Cipher.DECRYPT_MODE, tk, new GCMParameterSpec(128, iv));
                require(Arrays.equals(pt, d.doFinal(ct)), "the token copy is another key");
                again.deleteEntry(alias);
                KeyStore third = KeyStore.getInstance("PKCS11", p11);
                third.load(null, pin);
                require(!Collections.list(third.aliases()).contains(alias), "alias " + alias + " still there after delete");
            });
        }

        check("logout: AuthProvider.logout (C_Logout)", () -> {
            ((AuthProvider) p11).logout();
        });

        summary();
    }

    static void summary() {
        System.out.println(passed + " passed, " + failed + " failed, " + skipped + " skipped");
        System.out.flush();
        System.exit(failed > 0 || passed == 0 ? 1 : 0);
    }
}
