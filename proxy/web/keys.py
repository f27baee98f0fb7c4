"""Typed application state keys."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from proxy.auth.authorizer import Authorizer
from proxy.cube.client import Buffered
from proxy.cube.forward import Forwarder
from proxy.cube.signing import Signer
from proxy.cube.tenants import Tenant, Tenants
from proxy.http_client import HttpClient
from proxy.limits.caller_rate import RateLimiter
from proxy.limits.overload import LoadShedder
from proxy.pipeline.access_log import AccessLog
from proxy.pipeline.coalesce import Coalescer
from proxy.pipeline.request_id import RequestIds
from proxy.settings import Settings
from proxy.singleflight import SingleFlightCache

SETTINGS = web.AppKey("settings", Settings)
AUTHORIZER = web.AppKey("authorizer", Authorizer)
SIGNER = web.AppKey("signer", Signer)
FORWARDER = web.AppKey("forwarder", Forwarder)
COALESCER = web.AppKey("coalescer", Coalescer)
META_CACHE = web.AppKey("meta_cache", SingleFlightCache[Tenant, Buffered])
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
SHEDDER = web.AppKey("shedder", LoadShedder)
TENANTS = web.AppKey("tenants", Tenants)
REQUEST_IDS = web.AppKey("request_ids", RequestIds)
CUBE_HTTP = web.AppKey("cube_http", HttpClient)
GITLAB_SESSION = web.AppKey("gitlab_session", aiohttp.ClientSession)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
