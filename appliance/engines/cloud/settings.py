"""Cloud API account settings: what the API accepts, what is stored, what the worker uses.

Secrets (access token, app secret) are stored encrypted with the data key
(``DataCipher``); API answers show them masked. ``CloudSettings`` validates API input,
``store_settings`` turns it into the stored form, ``CloudConfig`` is the stored form with
the secrets decrypted (worker and webhook use only). Used by the API process (account
routes, the public webhook) as well as the engine, so it imports nothing of the engine.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from appliance.crypto import DataCipher
from appliance.errors import N_
from appliance.schemas_base import Strict

MASK = "****"
TOKEN_CONTEXT = b"cloud:access_token"
SECRET_CONTEXT = b"cloud:app_secret"
SECRET_FIELDS = ("access_token", "app_secret")
DEFAULT_BASE_URL = "https://graph.facebook.com"


class CloudSettings(Strict):
    """Cloud API account settings as given to the API.

    ``access_token`` and ``app_secret`` are stored encrypted (``*_enc``) and shown
    masked. Sending the stored settings back unchanged (masked values with their
    ``*_enc`` fields) keeps the stored secrets.
    """

    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$", description="Graph phone number id")
    access_token: str | None = Field(default=None, min_length=1, max_length=4096)
    app_secret: str | None = Field(default=None, min_length=1, max_length=512)
    verify_token: str = Field(min_length=1, max_length=512)
    api_version: str = Field(default="v21.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,3}$")
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        max_length=2048,
        description="Graph API root. Changing it needs the admin role and access_token and "
        "app_secret entered again in the same request; reached through the SSRF guard "
        "(OUTBOUND_ALLOW_NETWORKS)",
    )
    download_media: bool | None = Field(
        default=None, description="Override the account's download_media setting"
    )
    access_token_enc: str | None = Field(default=None, max_length=16384)
    app_secret_enc: str | None = Field(default=None, max_length=4096)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(N_("must be an http:// or https:// URL without query"))
        return value

    @model_validator(mode="after")
    def _secrets_given(self) -> CloudSettings:
        for name in ("access_token", "app_secret"):
            value = getattr(self, name)
            if (value is None or value.startswith(MASK)) and getattr(self, f"{name}_enc") is None:
                raise ValueError(N_("{name} is required", name=name))
        return self


def base_url_change(
    stored: dict[str, Any], given: dict[str, Any]
) -> tuple[dict[str, Any], list[str] | None]:
    """Settings given to PATCH, checked for a move of ``base_url``.

    The access token goes to ``base_url`` with every request, so the stored secrets
    never follow the account to another URL: a new ``base_url`` needs both secrets
    entered again (the caller also needs the admin role). Answers the settings to
    validate (``base_url`` kept when left out) and None when ``base_url`` does not
    change, else the secret fields not re-entered (missing, empty or masked).
    """
    current = str(stored.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
    if "base_url" not in given:
        return {**given, "base_url": current}, None
    wanted = given["base_url"]
    if isinstance(wanted, str) and wanted.rstrip("/") == current:
        return given, None
    missing = [
        name
        for name in SECRET_FIELDS
        if not isinstance(given.get(name), str) or not given[name] or given[name].startswith(MASK)
    ]
    return given, missing


def mask(value: str) -> str:
    return MASK + value[-4:] if len(value) >= 16 else MASK


def _encrypt(cipher: DataCipher, value: str, context: bytes) -> str:
    return base64.b64encode(cipher.encrypt(value.encode(), context=context)).decode()


def _decrypt(cipher: DataCipher, blob: str, context: bytes) -> str:
    return cipher.decrypt(base64.b64decode(blob), context=context).decode()


def store_settings(raw: dict[str, Any], cipher: DataCipher) -> dict[str, Any]:
    """Validate API input and return what is stored: secrets encrypted, shown masked.

    Raises pydantic's ValidationError; ValueError when a kept ``*_enc`` value does not
    decrypt with this appliance's data key.
    """
    given = CloudSettings.model_validate(raw)
    out = given.model_dump(exclude={"access_token", "app_secret"})
    for name, context in (("access_token", TOKEN_CONTEXT), ("app_secret", SECRET_CONTEXT)):
        value = getattr(given, name)
        if value is not None and not value.startswith(MASK):
            out[f"{name}_enc"] = _encrypt(cipher, value, context)
        else:
            try:
                value = _decrypt(cipher, out[f"{name}_enc"], context)
            except Exception:
                raise ValueError(
                    N_("{name}_enc is not a value stored by this appliance", name=name)
                ) from None
        out[name] = mask(value)
    return out


@dataclass(frozen=True)
class CloudConfig:
    """Stored settings with the secrets decrypted (worker and webhook use only)."""

    phone_number_id: str
    access_token: str
    app_secret: str
    verify_token: str
    api_version: str
    base_url: str
    download_media: bool | None = None

    @classmethod
    def load(cls, stored: dict[str, Any], cipher: DataCipher) -> CloudConfig:
        return cls(
            phone_number_id=str(stored["phone_number_id"]),
            access_token=_decrypt(cipher, stored["access_token_enc"], TOKEN_CONTEXT),
            app_secret=_decrypt(cipher, stored["app_secret_enc"], SECRET_CONTEXT),
            verify_token=str(stored["verify_token"]),
            api_version=str(stored.get("api_version") or "v21.0"),
            base_url=str(stored.get("base_url") or DEFAULT_BASE_URL).rstrip("/"),
            download_media=stored.get("download_media"),
        )

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url, self.api_version, *parts])


def app_secret_of(stored: dict[str, Any], cipher: DataCipher) -> str:
    return _decrypt(cipher, stored["app_secret_enc"], SECRET_CONTEXT)
