#!/usr/bin/env node
// A real Element-stack client for the Python tests: matrix-js-sdk with its Rust
// crypto (the same crypto Element Web uses), in "exclude insecure devices" mode.
//
// It logs in as a test user, bootstraps cross-signing for that user (Element
// does this on first login, and MSC4153 clients refuse to send without it),
// switches to OnlySignedDevicesIsolationMode, joins a room, sends one encrypted
// text and waits for the hub's m.notice that replies to it.
//
// Usage:
//   node element_client.mjs '{"homeserver": "http://127.0.0.1:8008", "user_id": "@alice:localhost",
//                            "password": "...", "room_id": "!r:localhost", "hub_user_id": "@hub:localhost",
//                            "text": "!hub ping", "timeout": 60}'
//   node element_client.mjs --homeserver URL --user-id @a:hs --password PW --room-id !r:hs \
//                           --hub-user-id @hub:hs [--text "!hub ping"] [--timeout 60] [--isolation only_signed|all]
//
// stdout: exactly one JSON line
//   {"sent_event_id", "reply_body", "decryption_error", "send_error", ...diagnostics}
// stderr: the SDK's own logging (at "warn" unless --verbose).
// Exit status: 0 the reply arrived and decrypted; 1 it did not (see the JSON); 2 usage error.

// Node 20 lacks Promise.withResolvers, which matrix-js-sdk 43 uses. It must be
// in place before the SDK is loaded, hence the dynamic imports below.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

// The SDK logs through loglevel, which writes info/debug with console.log: keep
// stdout for our single JSON line by sending every console method to stderr.
for (const name of ["log", "info", "debug", "trace"]) {
    console[name] = (...args) => console.error(...args);
}

const USAGE =
    "usage: element_client.mjs JSON | --homeserver URL --user-id MXID --password PW " +
    "--room-id ROOM --hub-user-id MXID [--text TEXT] [--timeout SECONDS] [--isolation only_signed|all] [--verbose]";

function parseArgs(argv) {
    let opts = {};
    if (argv.length === 1 && argv[0].trim().startsWith("{")) {
        opts = JSON.parse(argv[0]);
    } else {
        for (let i = 0; i < argv.length; i++) {
            const arg = argv[i];
            if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
            const key = arg.slice(2).replaceAll("-", "_");
            if (key === "verbose") {
                opts.verbose = true;
            } else {
                if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
                opts[key] = argv[++i];
            }
        }
    }
    for (const required of ["homeserver", "user_id", "password", "room_id", "hub_user_id"]) {
        if (!opts[required]) throw new Error(`missing ${required}`);
    }
    return {
        homeserver: String(opts.homeserver).replace(/\/+$/, ""),
        userId: String(opts.user_id),
        password: String(opts.password),
        roomId: String(opts.room_id),
        hubUserId: String(opts.hub_user_id),
        text: opts.text === undefined ? "!hub ping" : String(opts.text),
        timeoutMs: 1000 * Number(opts.timeout ?? 60),
        isolation: String(opts.isolation ?? "only_signed"),
        verbose: Boolean(opts.verbose),
    };
}

const errText = (e) => (e && (e.errcode || e.name) ? `${e.errcode || e.name}: ${e.message}` : String(e));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, predicate, timeoutMs, intervalMs = 100) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        if (await predicate()) return;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await sleep(intervalMs);
    }
}

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        process.stderr.write(`${e.message}\n${USAGE}\n`);
        return 2;
    }

    const sdk = await import("matrix-js-sdk");
    const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(opts.verbose ? "debug" : "warn");

    const started = Date.now();
    const result = {
        sent_event_id: null,
        reply_body: null,
        decryption_error: null,
        send_error: null,
        error: null,
        // diagnostics, for the test's failure messages and the note
        device_id: null,
        own_device_cross_signed: null,
        isolation: opts.isolation,
        hub_devices: null,
        undecryptable_hub_events: 0,
        elapsed_ms: null,
    };

    let client = null;
    // Global watchdog: whatever hangs, we still print a line and exit.
    const watchdog = setTimeout(() => {
        result.error = result.error ?? "watchdog: gave up";
        finish(1);
    }, opts.timeoutMs + 60_000);

    let finished = false;
    function finish(code) {
        if (finished) return;
        finished = true;
        clearTimeout(watchdog);
        result.elapsed_ms = Date.now() - started;
        try {
            client?.stopClient();
        } catch {
            // best effort: we are exiting anyway
        }
        process.stdout.write(`${JSON.stringify(result)}\n`);
        // The wasm crypto and the sync loop keep handles open; exit explicitly.
        process.exitCode = code;
        setTimeout(() => process.exit(code), 50);
    }

    try {
        const login = await sdk.createClient({ baseUrl: opts.homeserver }).loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: opts.userId },
            password: opts.password,
            initial_device_display_name: "element_client.mjs (matrix-js-sdk + rust crypto)",
        });
        result.device_id = login.device_id;
        client = sdk.createClient({
            baseUrl: opts.homeserver,
            userId: login.user_id,
            deviceId: login.device_id,
            accessToken: login.access_token,
        });
        // In-memory crypto store: Node has no IndexedDB, and each run is a fresh device.
        await client.initRustCrypto({ useIndexedDB: false });
        const crypto = client.getCrypto();
        crypto.setDeviceIsolationMode(
            opts.isolation === "all"
                ? new cryptoApi.AllDevicesIsolationMode(false)
                : new cryptoApi.OnlySignedDevicesIsolationMode(),
        );

        // Start syncing before bootstrapping: the rust crypto uploads the device
        // keys from its outgoing-request loop, and cross-signing this device
        // needs them on the server.
        const prepared = new Promise((resolve, reject) => {
            client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
                if (state === sdk.SyncState.Prepared) resolve();
                if (state === sdk.SyncState.Error) reject(data?.error ?? new Error("sync error"));
            });
        });
        await client.startClient({ initialSyncLimit: 10 });
        await prepared;

        // What Element does on first login: create the user's cross-signing
        // identity and sign this device with it (UIA answered with the password).
        await crypto.bootstrapCrossSigning({
            authUploadDeviceSigningKeys: async (makeRequest) => {
                try {
                    return await makeRequest(null);
                } catch (e) {
                    const session = e?.data?.session;
                    if (e?.httpStatus !== 401 || !e?.data?.flows) throw e;
                    return await makeRequest({
                        type: "m.login.password",
                        identifier: { type: "m.id.user", user: opts.userId },
                        password: opts.password,
                        session,
                    });
                }
            },
        });
        await waitFor(
            "own device to be cross-signed",
            async () => {
                const status = await crypto.getDeviceVerificationStatus(login.user_id, login.device_id);
                return Boolean(status?.crossSigningVerified);
            },
            20_000,
        );
        result.own_device_cross_signed = true;

        // Collect the hub's events before sending: the reply can beat
        // sendMessage's own promise.
        const hubEvents = new Map(); // event id -> MatrixEvent
        let notify = () => {};
        const consider = (ev) => {
            if (ev.getRoomId() !== opts.roomId || ev.getSender() !== opts.hubUserId) return;
            hubEvents.set(ev.getId(), ev);
            notify();
        };
        client.on(sdk.RoomEvent.Timeline, (ev) => consider(ev));
        // Fires when decryption finishes, also for a late retry once a key arrives.
        client.on(sdk.MatrixEventEvent.Decrypted, (ev) => consider(ev));

        await client.joinRoom(opts.roomId);
        await waitFor(
            "the room to be known as encrypted",
            async () => Boolean(client.getRoom(opts.roomId)) && (await crypto.isEncryptionEnabledInRoom(opts.roomId)),
            20_000,
        );

        try {
            const sent = await client.sendMessage(opts.roomId, { msgtype: "m.text", body: opts.text });
            result.sent_event_id = sent.event_id;
        } catch (e) {
            result.send_error = errText(e);
        }

        // Diagnostics: how does our client see the hub's devices?
        try {
            const devices = (await crypto.getUserDeviceInfo([opts.hubUserId], true)).get(opts.hubUserId);
            result.hub_devices = [];
            for (const deviceId of devices?.keys() ?? []) {
                const st = await crypto.getDeviceVerificationStatus(opts.hubUserId, deviceId);
                result.hub_devices.push({ device_id: deviceId, signed_by_owner: Boolean(st?.signedByOwner) });
            }
        } catch (e) {
            result.hub_devices = `error: ${errText(e)}`;
        }

        if (result.sent_event_id === null) return finish(1);

        // Wait for an m.notice from the hub that replies to our event. An
        // undecryptable event from the hub after our send is remembered; we give
        // its key a short grace period to arrive before calling it a failure.
        const deadline = Date.now() + opts.timeoutMs;
        let firstFailureAt = null;
        const GRACE_MS = 5_000;
        for (;;) {
            let failures = 0;
            for (const ev of hubEvents.values()) {
                if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) continue;
                if (ev.isDecryptionFailure()) {
                    failures += 1;
                    result.decryption_error = ev.decryptionFailureReason ?? "UNKNOWN_ERROR";
                    continue;
                }
                const content = ev.getContent();
                if (
                    ev.getType() === "m.room.message" &&
                    content.msgtype === "m.notice" &&
                    content["m.relates_to"]?.["m.in_reply_to"]?.event_id === result.sent_event_id
                ) {
                    result.reply_body = content.body ?? "";
                    result.decryption_error = null;
                    result.undecryptable_hub_events = failures;
                    return finish(0);
                }
            }
            result.undecryptable_hub_events = failures;
            if (failures > 0 && firstFailureAt === null) firstFailureAt = Date.now();
            const now = Date.now();
            if (now > deadline || (firstFailureAt !== null && now - firstFailureAt > GRACE_MS)) {
                if (result.decryption_error === null) result.error = "timed out waiting for the hub's reply";
                return finish(1);
            }
            await new Promise((resolve) => {
                notify = resolve;
                setTimeout(resolve, 250);
            });
        }
    } catch (e) {
        result.error = errText(e);
        return finish(1);
    }
}

const code = await main();
if (code === 2) process.exit(2);
