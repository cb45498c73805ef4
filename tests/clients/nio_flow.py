#!/usr/bin/env python3
"""A real Matrix client (matrix-nio) for Myelin's end-to-end tests.

    nio_flow.py solo HOMESERVER USER PASSWORD [--cafile CA] [--resolve HOST:IP]

    nio_flow.py media HOMESERVER USER PASSWORD [--cafile CA] [--resolve HOST:IP]

solo: log in, create a room, send a message, /sync, and check the message came back.
media: log in, create a room, send a message, /sync until it shows up (a sync worker learns
of it by replication), upload 256 KiB of random bytes, download them by their mxc:// URI and
compare. Prints "sync_requests=N uploaded=mxc://… media_ok=True".
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

from nio import (AsyncClient, AsyncClientConfig, DownloadResponse, LoginResponse,
                 RoomCreateResponse, RoomSendResponse, SyncResponse, UploadResponse)


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
    cfg = AsyncClientConfig(max_timeouts=2, request_timeout=20, max_timeout_retry_wait_time=1)
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
    for q in (p, m):
        q.add_argument("--cafile")
        q.add_argument("--resolve", action="append", default=[])
    args = ap.parse_args()
    return asyncio.run({"solo": solo, "media": media}[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
