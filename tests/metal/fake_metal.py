#!/usr/bin/env python3
"""A stateful fake of the Equinix Metal API (the part clusterform-provider-metal uses),
for the test suite. Python standard library only.

The tests run it behind `prism proxy --errors` with the official OpenAPI spec
(../shared/specs/equinix-metal-v1/openapi3.yaml), so every request the plugin sends and
every response this fake returns is checked against the spec. What the spec does not
describe (the `/_fake/...` control calls the tests make directly) never goes through prism.

    fake_metal.py --port 0 --token TOKEN --project PROJECT_ID [--ready-polls 2]

prints `listening on PORT` once it listens on 127.0.0.1.

Devices move queued -> provisioning -> active over `--ready-polls` reads each, and
deprovisioning -> gone after a delete; lists page at most `per_page` (max 1000) and filter
by `tag`. Control calls: POST /_fake/throttle {"n": N, "retry_after": S} (the next N API
calls get 429), POST /_fake/fail-next-create (the next device ends `failed`), POST
/_fake/reject-next-create {"errors": [...]} (422), POST /_fake/remove/{id} and
/_fake/retag/{id} {"tags": [...]} (out-of-band changes), POST /_fake/seed {"count": N,
"tags": [...]} (N active devices), GET /_fake/calls (call counts by method and route),
GET /_fake/devices (every device, raw), GET /_fake/vlans, GET /_fake/ips (every IP
reservation), POST /_fake/ip-approval-required {"on": true} (reservation requests need
Equinix's approval: refused with 422 under `fail_on_approval_required`, else `pending`).

IP reservations (`POST /projects/{id}/ips`, type `public_ipv4`, a power-of-two
`quantity`) get addresses from a public pool per metro, 147.28.<metro index>.<n>
(devices' own public addresses are 147.75.x.y). A device asking for
`ip_addresses[].ip_reservations` takes the reservation's address (an assignment, listed
in the reservation's `assignments`) instead of one of the pool; deleting the device frees
it, and a reservation still assigned to a device cannot be deleted (422, as the API
refuses).
"""

import argparse
import json
import re
import sys
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
STATE = {
    "devices": {},  # id -> device dict (API shape) + "_polls", "_fail", "_gone_in"
    "vlans": {},
    "ips": {},
    "calls": {},
    "throttle": 0,
    "retry_after": 1,
    "fail_next_create": False,
    "reject_next_create": None,
    "next_vxlan": 1000,
    "next_ip": 10,
    "ip_pool": {},  # metro code -> next host number in 147.28.<metro index>.x
    "ip_approval": False,
}
METROS = {
    "da": "Dallas",
    "ch": "Chicago",
    "dc": "Ashburn",
    "sv": "Silicon Valley",
    "ny": "New York",
    "am": "Amsterdam",
}


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def metro(code):
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "metro/" + code)),
        "code": code,
        "name": METROS.get(code, code),
        "country": "US",
    }


def public(obj):
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def metro_index(code):
    """The third octet of a metro's reservation pool: its place in METROS, then later."""
    codes = list(METROS)
    if code not in codes:
        METROS[code] = code
        codes.append(code)
    return codes.index(code)


def live_device(href):
    """The device at `href`, unless it is gone or going."""
    dev_id = href.rstrip("/").rsplit("/", 1)[-1]
    dev = STATE["devices"].get(dev_id)
    if dev is None or dev["state"] in ("deprovisioning", "deleted"):
        return None
    return dev


def free_assignments(dev):
    """A device going away gives its reserved addresses back."""
    for res in STATE["ips"].values():
        res["assignments"] = [
            a for a in res["assignments"] if a["assigned_to"]["href"] != dev["href"]
        ]


def advance(dev, ready_polls):
    """One read of a device: it moves on through its states."""
    dev["_polls"] += 1
    state = dev["state"]
    if state == "queued" and dev["_polls"] >= 1:
        dev["state"] = "provisioning"
    elif state == "provisioning" and dev["_polls"] >= ready_polls:
        dev["state"] = "failed" if dev["_fail"] else "active"
        dev["provisioning_percentage"] = 100.0
    elif state == "deprovisioning":
        dev["_gone_in"] -= 1
        if dev["_gone_in"] <= 0:
            return False
    dev["updated_at"] = now()
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-metal/1"

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            sys.stderr.write("fake-metal: " + (fmt % args) + "\n")

    # -- helpers -----------------------------------------------------------------------
    def reply(self, code, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, *messages):
        self.reply(code, {"errors": list(messages)})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n == 0:
            return {}
        try:
            return json.loads(self.rfile.read(n))
        except ValueError:
            return None

    def count(self, route):
        key = f"{self.command} {route}"
        STATE["calls"][key] = STATE["calls"].get(key, 0) + 1

    def authorized(self):
        if self.headers.get("X-Auth-Token") != self.server.token:
            self.error(401, "Invalid authentication token")
            return False
        return True

    def throttled(self):
        if STATE["throttle"] > 0:
            STATE["throttle"] -= 1
            self.reply(
                429,
                {"errors": ["Too many requests"]},
                {"Retry-After": str(STATE["retry_after"])},
            )
            return True
        return False

    # -- dispatch ----------------------------------------------------------------------
    def handle_any(self):
        url = urlsplit(self.path)
        path = re.sub(r"^/metal/v1", "", url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with LOCK:
            if path.startswith("/_fake/"):
                return self.control(path, self.body())
            for method, pattern, route, fn in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and method == self.command:
                    self.count(route)
                    if not self.authorized() or self.throttled():
                        return None
                    return fn(self, query, *m.groups())
            self.error(404, f"no route for {self.command} {path}")
        return None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    # -- control -----------------------------------------------------------------------
    def control(self, path, body):
        body = body or {}
        if path == "/_fake/throttle":
            STATE["throttle"] = int(body.get("n", 1))
            STATE["retry_after"] = int(body.get("retry_after", 1))
        elif path == "/_fake/fail-next-create":
            STATE["fail_next_create"] = True
        elif path == "/_fake/reject-next-create":
            STATE["reject_next_create"] = body.get("errors") or ["rejected"]
        elif path.startswith("/_fake/remove/"):
            dev = STATE["devices"].pop(path.rsplit("/", 1)[1], None)
            if dev is not None:
                free_assignments(dev)
        elif path.startswith("/_fake/retag/"):
            dev = STATE["devices"].get(path.rsplit("/", 1)[1])
            if dev is None:
                return self.error(404, "no such device")
            dev["tags"] = list(body.get("tags", []))
        elif path == "/_fake/seed":
            for i in range(int(body.get("count", 1))):
                dev = self.new_device(
                    self.server.project,
                    {
                        "hostname": f"seed-{i}",
                        "metro": "da",
                        "plan": "c3.small.x86",
                        "operating_system": "flatcar_stable",
                        "tags": list(body.get("tags", [])),
                    },
                )
                dev["state"] = "active"
        elif path == "/_fake/calls":
            return self.reply(200, STATE["calls"])
        elif path == "/_fake/reset-calls":
            STATE["calls"] = {}
        elif path == "/_fake/devices":
            return self.reply(200, [public(d) for d in STATE["devices"].values()])
        elif path == "/_fake/vlans":
            return self.reply(200, list(STATE["vlans"].values()))
        elif path == "/_fake/ips":
            return self.reply(200, [public(r) for r in STATE["ips"].values()])
        elif path == "/_fake/ip-approval-required":
            STATE["ip_approval"] = bool(body.get("on", True))
        else:
            return self.error(404, "unknown control call")
        return self.reply(200, {"ok": True})

    # -- devices -----------------------------------------------------------------------
    def new_device(self, project, body):
        dev_id = str(uuid.uuid4())
        STATE["next_ip"] += 1
        n = STATE["next_ip"]
        address = f"10.70.{n // 250}.{n % 250 + 2}"
        bond = {
            "id": str(uuid.uuid4()),
            "name": "bond0",
            "type": "NetworkBondPort",
            "network_type": "layer3",
            "virtual_networks": [],
        }
        os_slug = body.get("operating_system", "")
        dev = {
            "id": dev_id,
            "href": f"/metal/v1/devices/{dev_id}",
            "short_id": dev_id[:8],
            "hostname": body.get("hostname", ""),
            "description": body.get("description", ""),
            "state": "queued",
            "tags": list(body.get("tags", [])),
            "userdata": body.get("userdata", ""),
            "always_pxe": bool(body.get("always_pxe", False)),
            "customdata": body.get("customdata") or {},
            "metro": metro(body.get("metro", "")),
            "plan": {"slug": body.get("plan", ""), "name": body.get("plan", "")},
            "operating_system": {"slug": os_slug, "name": os_slug, "distro": "flatcar"},
            "ip_addresses": [
                {
                    "id": str(uuid.uuid4()),
                    "address": address,
                    "address_family": 4,
                    "public": False,
                    "management": True,
                    "cidr": 31,
                }
            ],
            "network_ports": [bond],
            "project_lite": {"href": f"/metal/v1/projects/{project}"},
            "locked": False,
            "created_at": now(),
            "updated_at": now(),
            "_polls": 0,
            "_fail": False,
            "_gone_in": 0,
        }
        if body.get("ipxe_script_url"):
            dev["ipxe_script_url"] = body["ipxe_script_url"]
        # Public IPv4 unless `ip_addresses` asks for private ones only (as the API does);
        # one asked for from reservations takes their address instead.
        wanted = body.get("ip_addresses")
        if wanted is None or any(
            ip.get("public", True)
            and ip.get("address_family") == 4
            and not ip.get("ip_reservations")
            for ip in wanted
        ):
            dev["ip_addresses"].append(
                {
                    "id": str(uuid.uuid4()),
                    "address": f"147.75.{n // 250}.{n % 250 + 2}",
                    "address_family": 4,
                    "public": True,
                    "management": True,
                    "cidr": 31,
                }
            )
        for ip in body.get("ip_addresses") or []:
            for res_id in ip.get("ip_reservations") or []:
                res = STATE["ips"][res_id]  # checked by reservations_error
                aid = str(uuid.uuid4())
                assignment = {
                    "id": aid,
                    "href": f"/metal/v1/ips/{aid}",
                    "address": res["address"],
                    "network": res["network"],
                    "netmask": "255.255.255.255",
                    "gateway": res["address"],
                    "address_family": 4,
                    "cidr": 32,
                    "public": res["public"],
                    "management": True,
                    "manageable": True,
                    "enabled": True,
                    "global_ip": False,
                    "assigned_to": {"href": dev["href"]},
                    "metro": res["metro"],
                    "created_at": now(),
                }
                dev["ip_addresses"].append(assignment)
                res["assignments"].append(dict(assignment))
        STATE["devices"][dev_id] = dev
        return dev

    def reservations_error(self, body):
        """Why the device's `ip_reservations` cannot be used (None when they can)."""
        for ip in body.get("ip_addresses") or []:
            for res_id in ip.get("ip_reservations") or []:
                res = STATE["ips"].get(res_id)
                if res is None:
                    return f"IP reservation {res_id} not found in the project"
                if res["state"] != "created":
                    return f"IP reservation {res_id} is {res['state']} and cannot be assigned yet"
                if res["metro"]["code"] != body.get("metro"):
                    return (
                        f"IP reservation {res_id} is in metro {res['metro']['code']}, "
                        f"the device in {body.get('metro')}"
                    )
                if any(live_device(a["assigned_to"]["href"]) for a in res["assignments"]):
                    return f"IP reservation {res_id} ({res['address']}) is already assigned"
        return None

    def list_devices(self, query, project):
        if project != self.server.project:
            return self.error(404, "Not found")
        tag = query.get("tag")
        items = [
            d
            for d in STATE["devices"].values()
            if tag is None or tag in d["tags"]
        ]
        for d in list(items):
            if not advance(d, self.server.ready_polls):
                STATE["devices"].pop(d["id"], None)
                items.remove(d)
        try:
            page = max(1, int(query.get("page", 1)))
            per_page = min(1000, max(1, int(query.get("per_page", 10))))
        except ValueError:
            return self.error(422, "page and per_page must be integers")
        total = len(items)
        last = max(1, (total + per_page - 1) // per_page)
        chunk = items[(page - 1) * per_page : page * per_page]
        meta = {"total": total, "current_page": page, "last_page": last}
        base = f"/metal/v1/projects/{project}/devices?per_page={per_page}"
        if tag is not None:
            from urllib.parse import quote

            base += "&tag=" + quote(tag, safe="")
        meta["self"] = {"href": f"{base}&page={page}"}
        meta["first"] = {"href": f"{base}&page=1"}
        meta["last"] = {"href": f"{base}&page={last}"}
        if page < last:
            meta["next"] = {"href": f"{base}&page={page + 1}"}
        return self.reply(200, {"devices": [public(d) for d in chunk], "meta": meta})

    def create_device(self, query, project):
        if project != self.server.project:
            return self.error(404, "Not found")
        body = self.body()
        if not isinstance(body, dict):
            return self.error(422, "the request body is not JSON")
        if STATE["reject_next_create"] is not None:
            errors = STATE["reject_next_create"]
            STATE["reject_next_create"] = None
            return self.error(422, *errors)
        missing = [k for k in ("metro", "plan", "operating_system") if not body.get(k)]
        if missing:
            return self.error(422, *[f"{k} is required" for k in missing])
        if body["operating_system"] == "custom_ipxe" and not body.get("ipxe_script_url"):
            return self.error(422, "ipxe_script_url is required with custom_ipxe")
        problem = self.reservations_error(body)
        if problem is not None:
            return self.error(422, problem)
        dev = self.new_device(project, body)
        if STATE["fail_next_create"]:
            STATE["fail_next_create"] = False
            dev["_fail"] = True
        return self.reply(201, public(dev))

    def get_device(self, query, dev_id):
        dev = STATE["devices"].get(dev_id)
        if dev is None or not advance(dev, self.server.ready_polls):
            STATE["devices"].pop(dev_id, None)
            return self.error(404, "Not found")
        return self.reply(200, public(dev))

    def update_device(self, query, dev_id):
        dev = STATE["devices"].get(dev_id)
        if dev is None:
            return self.error(404, "Not found")
        body = self.body()
        if not isinstance(body, dict):
            return self.error(422, "the request body is not JSON")
        for key in (
            "hostname",
            "description",
            "tags",
            "locked",
            "always_pxe",
            "ipxe_script_url",
            "customdata",
        ):
            if key in body:
                dev[key] = body[key]
        dev["updated_at"] = now()
        return self.reply(200, public(dev))

    def delete_device(self, query, dev_id):
        dev = STATE["devices"].get(dev_id)
        if dev is None:
            return self.error(404, "Not found")
        if dev.get("locked"):
            return self.error(422, "Cannot delete a locked device")
        free_assignments(dev)
        dev["state"] = "deprovisioning"
        dev["_gone_in"] = 2
        return self.reply(204)

    # -- VLANs -------------------------------------------------------------------------
    def list_vlans(self, query, project):
        items = [public(v) for v in STATE["vlans"].values()]
        return self.reply(200, {"virtual_networks": items})

    def create_vlan(self, query, project):
        body = self.body()
        if not isinstance(body, dict) or not body.get("metro"):
            return self.error(422, "metro is required")
        wanted = body.get("vxlan")
        if wanted is not None:
            if not isinstance(wanted, int) or not 2 <= wanted <= 3999:
                return self.error(422, "vxlan must be between 2 and 3999")
            if any(
                v["vxlan"] == wanted and v["metro_code"] == body["metro"]
                for v in STATE["vlans"].values()
            ):
                return self.error(422, f"vxlan {wanted} is already in use in metro {body['metro']}")
        STATE["next_vxlan"] += 1
        vid = str(uuid.uuid4())
        vlan = {
            "id": vid,
            "href": f"/metal/v1/virtual-networks/{vid}",
            "description": body.get("description", ""),
            "metro_code": body["metro"],
            "metro": metro(body["metro"]),
            "vxlan": wanted if wanted is not None else STATE["next_vxlan"],
            "tags": list(body.get("tags", [])),
            "created_at": now(),
        }
        STATE["vlans"][vid] = vlan
        return self.reply(201, vlan)

    def get_vlan(self, query, vid):
        vlan = STATE["vlans"].get(vid)
        if vlan is None:
            return self.error(404, "Not found")
        return self.reply(200, vlan)

    def delete_vlan(self, query, vid):
        if STATE["vlans"].pop(vid, None) is None:
            return self.error(404, "Not found")
        return self.reply(204)

    # -- ports -------------------------------------------------------------------------
    def assign_port(self, query, port_id):
        body = self.body() or {}
        vnid = str(body.get("vnid", ""))
        vlan = STATE["vlans"].get(vnid) or next(
            (v for v in STATE["vlans"].values() if str(v["vxlan"]) == vnid), None
        )
        if vlan is None:
            return self.error(422, f"virtual network {vnid} not found")
        owner = next(
            (d for d in STATE["devices"].values() if any(p["id"] == port_id for p in d["network_ports"])),
            None,
        )
        if owner is not None and owner["metro"]["code"] != vlan["metro_code"]:
            return self.error(422, "the device and the virtual network must be in the same metro")
        for dev in STATE["devices"].values():
            for port in dev["network_ports"]:
                if port["id"] == port_id:
                    if dev["metro"]["code"] != vlan["metro_code"]:
                        return self.error(
                            422, "the virtual network is in another metro than the device"
                        )
                    ref = {"href": vlan["href"]}
                    if ref not in port["virtual_networks"]:
                        port["virtual_networks"].append(ref)
                    port["network_type"] = "hybrid"
                    return self.reply(200, port)
        return self.error(404, "Not found")

    # -- IP reservations ---------------------------------------------------------------
    def list_ips(self, query, project):
        if project != self.server.project:
            return self.error(404, "Not found")
        # `types` is a form-style array: `types=a&types=b` or `types=a,b`.
        raw = parse_qs(urlsplit(self.path).query).get("types", [])
        types = {t for v in raw for t in v.split(",") if t}
        items = [r for r in STATE["ips"].values() if not types or r["type"] in types]
        try:
            page = max(1, int(query.get("page", 1)))
            per_page = min(1000, max(1, int(query.get("per_page", 250))))
        except ValueError:
            return self.error(422, "page and per_page must be integers")
        total = len(items)
        last = max(1, (total + per_page - 1) // per_page)
        chunk = items[(page - 1) * per_page : page * per_page]
        base = f"/metal/v1/projects/{project}/ips?per_page={per_page}"
        for t in sorted(types):
            base += f"&types={t}"
        meta = {
            "total": total,
            "current_page": page,
            "last_page": last,
            "self": {"href": f"{base}&page={page}"},
            "first": {"href": f"{base}&page=1"},
            "last": {"href": f"{base}&page={last}"},
        }
        if page > 1:
            meta["previous"] = {"href": f"{base}&page={page - 1}"}
        if page < last:
            meta["next"] = {"href": f"{base}&page={page + 1}"}
        return self.reply(200, {"ip_addresses": [public(r) for r in chunk], "meta": meta})

    def create_ip(self, query, project):
        if project != self.server.project:
            return self.error(404, "Not found")
        body = self.body()
        if not isinstance(body, dict):
            return self.error(422, "the request body is not JSON")
        kind = body.get("type")
        quantity = body.get("quantity")
        if kind != "public_ipv4":
            return self.error(422, f"type {kind!r} is not supported here; request public_ipv4")
        if (
            not isinstance(quantity, int)
            or isinstance(quantity, bool)
            or quantity < 1
            or quantity > 256
            or quantity & (quantity - 1)
        ):
            return self.error(422, "quantity must be a power of 2 from 1 to 256")
        code = body.get("metro")
        if not code or body.get("facility"):
            return self.error(422, "metro is required (and facility is not supported)")
        code = str(code).lower()
        if STATE["ip_approval"] and body.get("fail_on_approval_required"):
            return self.error(
                422,
                "This request requires approval: the project's public IPv4 quota is exhausted",
            )
        # An aligned block of `quantity` addresses from the metro's pool.
        start = STATE["ip_pool"].get(code, 2)
        start = (start + quantity - 1) // quantity * quantity
        if start + quantity > 255:
            return self.error(422, f"no public IPv4 addresses left in metro {code}")
        STATE["ip_pool"][code] = start + quantity
        cidr = 32 - (quantity.bit_length() - 1)
        network = f"147.28.{metro_index(code)}.{start}"
        mask = (0xFFFFFFFF << (32 - cidr)) & 0xFFFFFFFF
        rid = str(uuid.uuid4())
        res = {
            "id": rid,
            "href": f"/metal/v1/ips/{rid}",
            "type": kind,
            "address": network,
            "network": network,
            "netmask": ".".join(str(mask >> shift & 0xFF) for shift in (24, 16, 8, 0)),
            "address_family": 4,
            "cidr": cidr,
            "public": True,
            "management": False,
            "manageable": True,
            "addon": True,
            "bill": False,
            "enabled": True,
            "global_ip": False,
            "state": "pending" if STATE["ip_approval"] else "created",
            "metro": metro(code),
            "tags": list(body.get("tags") or []),
            "details": body.get("details", ""),
            "customdata": body.get("customdata") or {},
            "assignments": [],
            "project_lite": {"href": f"/metal/v1/projects/{project}"},
            "created_at": now(),
        }
        STATE["ips"][rid] = res
        return self.reply(201, public(res))

    def find_assignment(self, aid):
        for dev in STATE["devices"].values():
            for ip in dev["ip_addresses"]:
                if ip["id"] == aid:
                    return {**ip, "assigned_to": {"href": dev["href"]}}
        return None

    def get_ip(self, query, rid):
        res = STATE["ips"].get(rid)
        if res is None:
            # The call answers an assignment's id too (an address a device has).
            assignment = self.find_assignment(rid)
            if assignment is None:
                return self.error(404, "Not found")
            return self.reply(200, assignment)
        return self.reply(200, public(res))

    def update_ip(self, query, rid):
        res = STATE["ips"].get(rid)
        if res is None:
            return self.error(404, "Not found")
        body = self.body()
        if not isinstance(body, dict):
            return self.error(422, "the request body is not JSON")
        for key in ("details", "customdata", "tags"):
            if key in body:
                res[key] = body[key]
        return self.reply(200, public(res))

    def delete_ip(self, query, rid):
        res = STATE["ips"].get(rid)
        if res is None:
            return self.error(404, "Not found")
        held = [a for a in res["assignments"] if live_device(a["assigned_to"]["href"])]
        if held:
            return self.error(
                422,
                f"Cannot delete IP reservation {res['address']}/{res['cidr']}: it is assigned "
                f"to {held[0]['assigned_to']['href']}; unassign it or delete the device first",
            )
        STATE["ips"].pop(rid)
        return self.reply(204)

UUID = r"([0-9a-fA-F-]{36})"
ROUTES = [
    ("GET", rf"/projects/{UUID}/devices", "/projects/{id}/devices", Handler.list_devices),
    ("POST", rf"/projects/{UUID}/devices", "/projects/{id}/devices", Handler.create_device),
    ("GET", rf"/devices/{UUID}", "/devices/{id}", Handler.get_device),
    ("PUT", rf"/devices/{UUID}", "/devices/{id}", Handler.update_device),
    ("DELETE", rf"/devices/{UUID}", "/devices/{id}", Handler.delete_device),
    ("GET", rf"/projects/{UUID}/virtual-networks", "/projects/{id}/virtual-networks", Handler.list_vlans),
    ("POST", rf"/projects/{UUID}/virtual-networks", "/projects/{id}/virtual-networks", Handler.create_vlan),
    ("GET", rf"/virtual-networks/{UUID}", "/virtual-networks/{id}", Handler.get_vlan),
    ("DELETE", rf"/virtual-networks/{UUID}", "/virtual-networks/{id}", Handler.delete_vlan),
    ("POST", rf"/ports/{UUID}/assign", "/ports/{id}/assign", Handler.assign_port),
    ("GET", rf"/projects/{UUID}/ips", "/projects/{id}/ips", Handler.list_ips),
    ("POST", rf"/projects/{UUID}/ips", "/projects/{id}/ips", Handler.create_ip),
    ("GET", rf"/ips/{UUID}", "/ips/{id}", Handler.get_ip),
    ("PATCH", rf"/ips/{UUID}", "/ips/{id}", Handler.update_ip),
    ("DELETE", rf"/ips/{UUID}", "/ips/{id}", Handler.delete_ip),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--ready-polls", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.token = args.token
    server.project = args.project
    server.ready_polls = args.ready_polls
    server.verbose = args.verbose
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
