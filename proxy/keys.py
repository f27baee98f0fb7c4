"""Typed application state keys."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .access_log import AccessLog
from .admission import LoadShedder
from .auth import Authorizer
from .coalesce import Coalescer
from .cube import Buffered
from .forward import Forwarder
from .ratelimit import RateLimiter
from .request_id import RequestIds
from .settings import Settings
from .signing import Signer
from .singleflight import SingleFlightCache
from .tenants import Tenant, Tenants
from .upstream import HttpClient

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
