#!/usr/bin/env python3
"""A real Matrix client (matrix-nio) for Myelin's end-to-end tests.

    nio_flow.py solo HOMESERVER USER PASSWORD [--cafile CA] [--resolve HOST:IP]

    nio_flow.py media HOMESERVER USER PASSWORD [--cafile CA] [--resolve HOST:IP]

    nio_flow.py federate --a HS USER PASSWORD --b HS USER PASSWORD [--cafile CA]
                         [--resolve HOST:IP]... [--timeout SECONDS] [--expect-blocked SECONDS]

solo: log in, create a room, send a message, /sync, and check the message came back.
media: log in, create a room, send a message, /sync until it shows up (a sync worker learns
of it by replication), upload 256 KiB of random bytes, download them by their mxc:// URI and
compare. Prints "sync_requests=N uploaded=mxc://… media_ok=True".
federate: two users on two homeservers. A creates a room and invites B (federation A → B);
B waits for the invite by /sync and joins (B → A); each sends a message and each waits by /sync
for the other's. Every wait ends within --timeout seconds (default 60). Prints one line of
key=value pairs, e.g. "invite_seen=True joined=True a_saw_b=True b_saw_a=True".
With --expect-blocked SECONDS: federation A → B must fail: the invite is refused, and B sees
neither the invite nor A's message for that many seconds. Prints "invite_error=… b_saw_invite=False".
Exit 0 when it worked; the last line of output says what happened.

--resolve maps a host name to a loopback address inside this process (no /etc/hosts edit).
Retries are capped so a broken proxy fails the test instead of hanging it.
"""
import argparse
import asyncio
import socket
import ssl
import sys
import uuid

import aiohttp
from aiohttp.abc import AbstractResolver
import io
import os
import time

from nio import (AsyncClient, AsyncClientConfig, DownloadResponse, JoinResponse, LoginResponse,
                 RoomCreateResponse, RoomInviteResponse, RoomSendResponse, SyncResponse,
                 UploadResponse)


class PinnedResolver(AbstractResolver):
    """Resolves the given names to fixed addresses, the rest through the system."""

    def __init__(self, pins):
        self.pins = pins
        self.system = aiohttp.ThreadedResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host in self.pins:
            ip = self.pins[host]
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            return [{"hostname": host, "host": ip, "port": port, "family": fam,
                     "proto": 0, "flags": socket.AI_NUMERICHOST}]
        return await self.system.resolve(host, port, family)

    async def close(self):
        await self.system.close()


def client_for(hs, user, args):
    ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    cfg = AsyncClientConfig(max_timeouts=2, max_limit_exceeded=2, request_timeout=20,
                            max_timeout_retry_wait_time=1)
    client = AsyncClient(hs, user, ssl=ctx, config=cfg)
    pins = dict(r.split(":", 1) for r in args.resolve)
    if pins:
        client.client_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=PinnedResolver(pins)))
    return client


async def solo(args):
    client = client_for(args.homeserver, args.user, args)
    try:
        r = await client.login(args.password, device_name="myelin-e2e")
        if not isinstance(r, LoginResponse):
            print("login failed:", r)
            return 1
        r = await client.room_create(name="e2e-" + uuid.uuid4().hex[:6])
        if not isinstance(r, RoomCreateResponse):
            print("room_create failed:", r)
            return 1
        room = r.room_id
        body = "through myelin " + str(uuid.uuid4())
        r = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
        if not isinstance(r, RoomSendResponse):
            print("room_send failed:", r)
            return 1
        r = await client.sync(timeout=3000, full_state=True)
        if not isinstance(r, SyncResponse):
            print("sync failed:", r)
            return 1
        joined = r.rooms.join.get(room)
        bodies = [getattr(e, "body", None) for e in (joined.timeline.events if joined else [])]
        ok = body in bodies
        print(f"user={client.user_id} room={room} message_seen={ok}")
        return 0 if ok else 1
    except Exception as e:  # TLS failures, refused connections
        print(f"FAILED: {type(e).__name__}: {e}")
        return 2
    finally:
        if client.logged_in:
            await client.logout()
        await client.close()


async def media(args):
    client = client_for(args.homeserver, args.user, args)
    try:
        r = await client.login(args.password, device_name="myelin-e2e-workers")
        if not isinstance(r, LoginResponse):
            print("login failed:", r)
            return 1
        r = await client.sync(timeout=0, full_state=True)
        if not isinstance(r, SyncResponse):
            print("initial sync failed:", r)
            return 1
        syncs = 1
        r = await client.room_create(name="workers-" + uuid.uuid4().hex[:6])
        if not isinstance(r, RoomCreateResponse):
            print("room_create failed:", r)
            return 1
        room = r.room_id
        body = "through myelin to the workers " + str(uuid.uuid4())
        r = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
        if not isinstance(r, RoomSendResponse):
            print("room_send failed:", r)
            return 1
        seen = False
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            r = await client.sync(timeout=2000)
            syncs += 1
            if not isinstance(r, SyncResponse):
                print("sync failed:", r)
                return 1
            joined = r.rooms.join.get(room)
            seen = joined is not None and any(
                getattr(e, "body", None) == body for e in joined.timeline.events)
        if not seen:
            print(f"the message never came back by /sync ({syncs} syncs)")
            return 1
        data = os.urandom(256 * 1024)
        up, _ = await client.upload(io.BytesIO(data), content_type="application/octet-stream",
                                    filename="e2e.bin", filesize=len(data))
        if not isinstance(up, UploadResponse):
            print("upload failed:", up)
            return 1
        down = await client.download(mxc=up.content_uri)
        if not isinstance(down, DownloadResponse):
            print("download failed:", down)
            return 1
        ok = down.body == data
        print(f"sync_requests={syncs} uploaded={up.content_uri} media_ok={ok}")
        return 0 if ok else 1
    except Exception as e:  # TLS failures, refused connections
        print(f"FAILED: {type(e).__name__}: {e}")
        return 2
    finally:
        if client.logged_in:
            await client.logout()
        await client.close()


class Failed(Exception):
    """A step of the flow that did not work; the message says which and why."""


async def login(client, password, device):
    r = await client.login(password, device_name=device)
    if not isinstance(r, LoginResponse):
        raise Failed(f"login of {client.user} failed: {r}")
    r = await client.sync(timeout=0, full_state=True)
    if not isinstance(r, SyncResponse):
        raise Failed(f"first sync of {client.user_id} failed: {r}")


async def sync_until(client, deadline, found):
    """Syncs until found(response) is true or the deadline passes; returns whether it was."""
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        r = await client.sync(timeout=int(max(0, min(2.0, left)) * 1000))
        if not isinstance(r, SyncResponse):
            raise Failed(f"sync of {client.user_id} failed: {r}")
        if found(r):
            return True
    return False


def bodies(r, room):
    joined = r.rooms.join.get(room)
    return [getattr(e, "body", None) for e in (joined.timeline.events if joined else [])]


async def federate(args):
    a = client_for(args.a[0], args.a[1], args)
    b = client_for(args.b[0], args.b[1], args)
    facts = {}
    try:
        await login(a, args.a[2], "myelin-federation-a")
        await login(b, args.b[2], "myelin-federation-b")
        r = await a.room_create(name="federation-" + uuid.uuid4().hex[:6])
        if not isinstance(r, RoomCreateResponse):
            raise Failed(f"room_create on A failed: {r}")
        room = r.room_id
        facts["room"] = room
        started = time.monotonic()
        r = await a.room_invite(room, b.user_id)
        if args.expect_blocked is not None:
            return await blocked(a, b, room, r, args, facts)
        if not isinstance(r, RoomInviteResponse):
            raise Failed(f"A could not invite {b.user_id} (federation A to B): {r}")
        deadline = started + args.timeout
        invited = await sync_until(b, deadline, lambda r: room in r.rooms.invite)
        facts["invite_seen"] = invited
        if not invited:
            raise Failed(f"{b.user_id} saw no invite to {room} within {args.timeout} s")
        facts["invite_s"] = round(time.monotonic() - started, 2)
        r = await b.join(room)
        facts["joined"] = isinstance(r, JoinResponse)
        if not isinstance(r, JoinResponse):
            raise Failed(f"{b.user_id} could not join {room} (federation B to A): {r}")
        from_a = "from A " + str(uuid.uuid4())
        from_b = "from B " + str(uuid.uuid4())
        for client, body in ((a, from_a), (b, from_b)):
            r = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            if not isinstance(r, RoomSendResponse):
                raise Failed(f"{client.user_id} could not send to {room}: {r}")
        sent = time.monotonic()
        deadline = sent + args.timeout
        facts["a_saw_b"] = await sync_until(a, deadline, lambda r: from_b in bodies(r, room))
        facts["b_saw_a"] = await sync_until(b, deadline, lambda r: from_a in bodies(r, room))
        facts["messages_s"] = round(time.monotonic() - sent, 2)
        ok = facts["a_saw_b"] and facts["b_saw_a"]
        print(" ".join(f"{k}={v}" for k, v in facts.items()))
        return 0 if ok else 1
    except Failed as e:
        print(" ".join(f"{k}={v}" for k, v in facts.items()))
        print(f"FAILED: {e}")
        return 1
    except Exception as e:  # TLS failures, refused connections
        print(" ".join(f"{k}={v}" for k, v in facts.items()))
        print(f"FAILED: {type(e).__name__}: {e}")
        return 2
    finally:
        for c in (a, b):
            if c.logged_in:
                try:
                    await c.logout()
                except Exception:
                    pass
            await c.close()


async def blocked(a, b, room, invite, args, facts):
    """Federation A → B is expected to fail: the invite is refused, and B sees nothing."""
    facts["invite_error"] = None if isinstance(invite, RoomInviteResponse) else \
        str(getattr(invite, "status_code", "")) + ":" + str(getattr(invite, "message", invite))
    body = "never arrives " + str(uuid.uuid4())
    r = await a.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
    facts["a_sent"] = isinstance(r, RoomSendResponse)
    deadline = time.monotonic() + args.expect_blocked
    saw = await sync_until(b, deadline, lambda r: room in r.rooms.invite or room in r.rooms.join)
    facts["b_saw_invite"] = saw
    print(" ".join(f"{k}={v!r}" if k == "invite_error" else f"{k}={v}" for k, v in facts.items()))
    return 0 if facts["invite_error"] is not None and not saw else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("solo")
    p.add_argument("homeserver")
    p.add_argument("user")
    p.add_argument("password")
    m = sub.add_parser("media")
    m.add_argument("homeserver")
    m.add_argument("user")
    m.add_argument("password")
    f = sub.add_parser("federate")
    f.add_argument("--a", nargs=3, required=True, metavar=("HS", "USER", "PASSWORD"))
    f.add_argument("--b", nargs=3, required=True, metavar=("HS", "USER", "PASSWORD"))
    f.add_argument("--timeout", type=float, default=60)
    f.add_argument("--expect-blocked", type=float, metavar="SECONDS")
    for q in (p, m, f):
        q.add_argument("--cafile")
        q.add_argument("--resolve", action="append", default=[])
    args = ap.parse_args()
    return asyncio.run({"solo": solo, "media": media, "federate": federate}[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
