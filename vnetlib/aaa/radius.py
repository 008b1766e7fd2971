"""FreeRADIUS configurations of end-user attachment, each in its own directory.

Two roles: the VNO's *server* (EAP against the VNO's user store, read per
request by rlm_perl; on accept it answers only with the attachment handle, in
the standard VLAN-assignment attributes, the pool and a session timeout) and
the PIP's *proxy* (routes by realm, `user@vno`, to the VNO's server; an
unknown realm is rejected locally; every outcome it sends back to the access
port's authenticator is logged with the port's NAS-Identifier, which is what
the PIP's access controller acts on).

Between the proxy and the server the channel is RADIUS over TLS (RadSec,
RFC 6614) with the lab's PKI: each side presents its player certificate and
checks the other's against the lab CA and its CRL; the server answers only
PIP certificates (OU `pip`), the proxy only the VNO's (its CN). The PIP never
sees the user's password, but the EAP method, EAP-MD5, runs through it: the
PIP sees the challenge and the MD5 response, enough for an offline dictionary
attack on weak passwords (a tunnelled method, PEAP or TTLS, would hide it). A
reject the proxy makes itself (unknown realm, the VNO's server silent for
`response_window` seconds) carries an EAP-Failure from the proxy's own eap
module, so the device learns at once instead of waiting for a reply forever.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vnetlib.aaa.daemons import private_dir, write_private

DICTDIR = "/usr/share/freeradius"
LIBDIR = "/usr/lib/freeradius"
DECISIONS_LOG = "decisions.log"
ACCOUNTING_LOG = "accounting.log"
AUTH_LOG = "auth.log"


@dataclass(frozen=True, slots=True)
class Tls:
    """Paths of a player's key, certificate and the CA that signed its peers."""

    key: str
    cert: str
    ca: str
    crl: str = ""  # the CA's CRL: with it, revoked peer certificates are refused


EAP_METHODS = ("ttls", "peap", "md5")
DEFAULT_METHODS = ("ttls", "peap")  # MD5 only when asked for: it exposes a password hash


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The VNO's RADIUS server: listens for RadSec from PIP proxies. EAP
    methods: TTLS (inner PAP) and PEAP (inner MSCHAPv2) end in the server,
    inside a TLS tunnel to the device that the PIP cannot open; MD5 only if
    listed."""

    directory: Path
    addresses: tuple[str, ...]  # the management addresses the PIPs reach it on
    port: int
    tls: Tls
    session_timeout: int = 3600
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in EAP_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"EAP methods {self.methods!r}: choose among {EAP_METHODS}")

    @property
    def tunnelled(self) -> bool:
        return any(m in ("ttls", "peap") for m in self.methods)


@dataclass(frozen=True, slots=True)
class HomeServer:
    realm: str
    address: str
    port: int
    name: str = ""  # the CN its certificate must carry (the VNO's name); "" = the realm

    @property
    def cn(self) -> str:
        return self.name or self.realm


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A PIP's RADIUS proxy: authenticators send to 127.0.0.1:`port` of its
    namespace with `secret`; realms go to their home servers over RadSec."""

    directory: Path
    port: int
    secret: str
    homes: tuple[HomeServer, ...]
    tls: Tls
    response_window: int = 3


# One line per event, fields separated by blanks, "-" where a value is absent.
AUTH_FORMAT = (
    "%{%{reply:Packet-Type}:--} %{User-Name} %{%{NAS-Identifier}:--} "
    "%{%{Calling-Station-Id}:--} %{%{reply:Tunnel-Private-Group-Id}:--}"
)
ACCT_FORMAT = (
    "%{Acct-Status-Type} %{User-Name} %{%{NAS-Identifier}:--} %{%{Calling-Station-Id}:--} "
    "%{%{Acct-Session-Id}:--} %{%{Acct-Session-Time}:-0} %{%{integer:Event-Timestamp}:-0} "
    "%{%{listen:TLS-Client-Cert-Common-Name}:--}"
)
DECISION_FORMAT = (
    "%{%{reply:Packet-Type}:--} %{%{NAS-Identifier}:--} %{%{Calling-Station-Id}:--} "
    "%{%{Realm}:--} %{%{reply:Tunnel-Private-Group-Id}:--} %{%{reply:Framed-Pool}:--} "
    "%{%{reply:Session-Timeout}:-0}"
)
RADSEC_SECRET = "radsec"  # RFC 6614: the secret is fixed, TLS protects the channel
TRUST_FILE = "trust.pem"  # the CA certificate followed by its CRL (check_crl)
CA_PATH = "capath"  # OpenSSL hash links to the player's CA and its current CRL
CRL_RELOAD = 300  # seconds (FreeRADIUS's least): a listener's next handshake re-reads the CRL
REVOKED_ATTR = "Tmp-String-9"  # the RadSec client's certificate serial, for the per-request check
CLIENT_ROLE = "pip"  # the role (certificate OU, vnetlib.players.pki) of RadSec clients
# Only a PIP's certificate may send requests to a VNO's server: the lab CA
# also signs SPs, VNPs and VNOs, which must not brute-force passwords or
# inject accounting records.
PIP_ONLY = (
    'if ("%{listen:TLS-Client-Cert-Subject}" !~ /\\/OU=' + CLIENT_ROLE + '(\\/|$)/) {'
)
NOT_REVOKED = f"""update request {{
            &{REVOKED_ATTR} := "%{{listen:TLS-Client-Cert-Serial}}"
        }}
        revocation"""


ALWAYS = """    always ok {
        rcode = ok
    }
    always reject {
        rcode = reject
    }"""


def _main(d: Path, name: str, reject_delay: int = 0) -> str:
    return f"""prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}/log
raddbdir = {d}
radacctdir = {d}/log
name = {name}
confdir = {d}
modconfdir = {d}
certdir = {d}
cadir = {d}
run_dir = {d}/run
db_dir = {d}
libdir = {LIBDIR}
dictdir = {DICTDIR}
pidfile = {d}/run/{name}.pid
max_request_time = 10
cleanup_delay = 1
max_requests = 65536
hostname_lookups = no
correct_escapes = true
log {{
    destination = files
    file = {d}/log/radius.log
    auth = yes
    auth_badpass = no
    auth_goodpass = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = {reject_delay}
    status_server = yes
}}
thread pool {{
    start_servers = 2
    max_servers = 16
    min_spare_servers = 1
    max_spare_servers = 8
    max_requests_per_server = 0
}}
"""


def _tls_block(tls: Tls, indent: str, d: Path, cn: str = "", server: bool = False) -> str:
    lines = [
        "tls {",
        f"    private_key_file = {tls.key}",
        f"    certificate_file = {tls.cert}",
        f"    ca_file = {tls.ca}",
        # the links follow the files `vnet pki revoke` replaces: a listener
        # re-reads them every CRL_RELOAD seconds (FreeRADIUS's client side,
        # the proxy's, reads them at start only)
        *([f"    ca_path = {d / CA_PATH}", "    check_crl = yes",
           f"    ca_path_reload_interval = {CRL_RELOAD}"] if tls.crl else []),
        *([f"    check_cert_cn = \"{_quote(cn)}\""] if cn else []),
        # without it a RadSec listener asks for no client certificate at all
        *(["    require_client_cert = yes"] if server else []),
        "    tls_min_version = \"1.2\"",
        "    tls_max_version = \"1.2\"",
        "    fragment_size = 8192",
        "}",
    ]
    return "\n".join(indent + line for line in lines)


CLASS_PREFIX = "vnet:"  # the accept's Class: an opaque session token, echoed in accounting
TUNNEL_REPLY = ("Tunnel-Type", "Tunnel-Medium-Type", "Tunnel-Private-Group-Id", "Framed-Pool",
                "Session-Timeout", "Class")


def _eap_module(cfg: ServerConfig) -> str:
    tls = cfg.tls
    methods = cfg.methods
    parts = [f"""    eap {{
        default_eap_type = {methods[0]}
        timer_expire = 60
        ignore_unknown_eap_types = no
        max_sessions = 65536"""]
    if cfg.tunnelled:
        parts.append(f"""        tls-config tls-common {{
            private_key_file = {tls.key}
            certificate_file = {tls.cert}
            ca_file = {tls.ca}
            cipher_list = "HIGH"
            cipher_server_preference = yes
            ecdh_curve = "prime256v1"
            tls_min_version = "1.2"
            tls_max_version = "1.2"
            fragment_size = 1024
            cache {{
                enable = no
            }}
            ocsp {{
                enable = no
            }}
        }}""")
    if "ttls" in methods:
        parts.append("""        ttls {
            tls = tls-common
            default_eap_type = md5
            copy_request_to_tunnel = no
            use_tunneled_reply = no
            virtual_server = "inner"
        }""")
    if "peap" in methods:
        parts.append("""        peap {
            tls = tls-common
            default_eap_type = mschapv2
            copy_request_to_tunnel = no
            use_tunneled_reply = no
            virtual_server = "inner"
        }
        mschapv2 {
        }""")
    if "md5" in methods:
        parts.append("""        md5 {
        }""")
    parts.append("    }")
    return "\n".join(parts)


def _inner_server(cfg: ServerConfig) -> str:
    """The tunnel's inside (TTLS: PAP; PEAP: EAP-MSCHAPv2): the user's real
    identity and password; the accept's attributes go out through the
    outer session's state, with an opaque Class for accounting."""
    copy = "\n".join(f"            &{a} := &reply:{a}" for a in TUNNEL_REPLY)
    return f"""server inner {{
    authorize {{
        users
        eap {{
            ok = return
        }}
        pap
        mschap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
        Auth-Type MS-CHAP {{
            mschap
        }}
        eap
    }}
    post-auth {{
        users
        update outer.session-state {{
{copy}
        }}
        inner_log
        Post-Auth-Type REJECT {{
            inner_log
        }}
    }}
}}
"""


def server_conf(cfg: ServerConfig) -> str:
    d = cfg.directory
    listens = "\n".join(f"""    listen {{
        type = auth+acct
        ipaddr = {address}
        port = {cfg.port}
        proto = tcp
        clients = radsec
{_tls_block(cfg.tls, "        ", d, server=True)}
        limit {{
            max_connections = 64
            lifetime = 0
            idle_timeout = 600
        }}
    }}""" for address in cfg.addresses)
    md5 = "md5" in cfg.methods
    # MD5 has no inside: the outer identity is the user's, checked here
    outer_users = "        users\n" if md5 else ""
    tunnelled = "\n".join(f"                &{a} := &session-state:{a}" for a in TUNNEL_REPLY)
    return _main(d, "vno-radius", reject_delay=1) + f"""
clients radsec {{
    client pips {{
        ipaddr = 0.0.0.0/0
        proto = tls
        secret = {RADSEC_SECRET}
    }}
}}
modules {{
{ALWAYS}
{_eap_module(cfg)}
    pap {{
    }}
    mschap {{
    }}
    perl users {{
        filename = {d}/users.pl
    }}
    perl revocation {{
        filename = {d}/users.pl
        func_authorize = revoked
        func_preacct = revoked
    }}
    linelog auth_log {{
        filename = {d}/{AUTH_LOG}
        format = "{AUTH_FORMAT}"
    }}
    linelog inner_log {{
        filename = {d}/{AUTH_LOG}
        format = "inner {AUTH_FORMAT}"
    }}
    linelog acct_log {{
        filename = {d}/{ACCOUNTING_LOG}
        format = "{ACCT_FORMAT}"
    }}
}}
server vno {{
{listens}
    authorize {{
        {PIP_ONLY}
            reject
        }}
        {NOT_REVOKED}
{outer_users}        eap
    }}
    authenticate {{
        eap
    }}
    post-auth {{
        if (&session-state:Tunnel-Private-Group-Id) {{
            update reply {{
{tunnelled}
            }}
        }}
        update reply {{
            Session-Timeout = {cfg.session_timeout}
        }}
        auth_log
        Post-Auth-Type REJECT {{
            update reply {{
                Tunnel-Type !* ANY
                Tunnel-Medium-Type !* ANY
                Tunnel-Private-Group-Id !* ANY
                Framed-Pool !* ANY
                Class !* ANY
            }}
            auth_log
        }}
    }}
    preacct {{
        {PIP_ONLY}
            reject
        }}
        {NOT_REVOKED}
        if (!&Event-Timestamp) {{
            update request {{
                Event-Timestamp := "%l"
            }}
        }}
        users
    }}
    accounting {{
        acct_log
        ok
    }}
}}
""" + (_inner_server(cfg) if cfg.tunnelled else "")


USERS_PL = r"""# The VNO's users, read from the store's file on every request (no reload).
use strict;
use warnings;
use JSON::PP;
use Time::HiRes qw(stat);  # sub-second mtimes: two changes in a second differ
our (%RAD_REQUEST, %RAD_REPLY, %RAD_CHECK);
use constant { RLM_MODULE_REJECT => 0, RLM_MODULE_OK => 2, RLM_MODULE_NOTFOUND => 6,
               RLM_MODULE_NOOP => 7,
               RLM_MODULE_UPDATED => 8 };
umask 077;

# Decoded once per change of the file (the store replaces it whole, a new
# inode each time), not per request: JSON::PP is pure perl, and decoding 200
# users on every round of 200 TTLS exchanges kept every server thread busy.
my ($users_key, $users) = ('', {});
sub authorize {
    my $name = $RAD_REQUEST{'User-Name'};
    return RLM_MODULE_NOOP unless defined $name;
    my @st = stat('@USERS@') or return RLM_MODULE_NOTFOUND;
    my $key = join(':', @st[1, 7, 9, 10]);
    if ($key ne $users_key) {
        open(my $fh, '<', '@USERS@') or return RLM_MODULE_NOTFOUND;
        local $/;
        my $text = <$fh>;
        close($fh);
        my $now = eval { decode_json($text) } or return RLM_MODULE_NOTFOUND;
        ($users, $users_key) = ($now, $key);
    }
    my $u = $users->{$name} or return RLM_MODULE_NOTFOUND;
    $RAD_CHECK{'Cleartext-Password'} = $u->{password};
    $RAD_REPLY{'Tunnel-Type'} = 'VLAN';
    $RAD_REPLY{'Tunnel-Medium-Type'} = 'IEEE-802';
    $RAD_REPLY{'Tunnel-Private-Group-Id'} = $u->{handle};
    $RAD_REPLY{'Framed-Pool'} = $u->{pool};
    $RAD_REPLY{'Session-Timeout'} = $u->{session_timeout} if defined $u->{session_timeout};
    return RLM_MODULE_OK;
}

# Inside a tunnel, after an accept: the user's name stays here; the PIP gets an
# opaque Class that its accounting echoes, which preacct turns back into it.
sub post_auth {
    my $name = $RAD_REQUEST{'User-Name'};
    return RLM_MODULE_NOOP unless defined $name;
    my $token = '';
    open(my $rnd, '<:raw', '/dev/urandom') or return RLM_MODULE_NOOP;
    read($rnd, my $bytes, 16);
    close($rnd);
    $token = unpack('H*', $bytes);
    open(my $fh, '>', '@CLASSES@/' . $token) or return RLM_MODULE_NOOP;
    print $fh $name;
    close($fh);
    $RAD_REPLY{'Class'} = '@PREFIX@' . $token;
    return RLM_MODULE_OK;
}

# The RadSec client's certificate against the CA's current CRL, on every
# request: a PIP revoked while its connection stays open is refused at once.
my ($crl_key, %revoked) = ('');
sub revoked {
    my $serial = lc($RAD_REQUEST{'@REVOKED_ATTR@'} // '');
    $serial =~ s/^(0x)?0*//;
    my @st = stat('@CRL@');
    return RLM_MODULE_NOOP unless $serial ne '' && @st;
    my $key = join(':', @st[1, 7, 9, 10]);
    if ($key ne $crl_key) {
        my (%now, $whole);
        open(my $out, '-|', 'openssl', 'crl', '-in', '@CRL@', '-noout', '-text')
            or return RLM_MODULE_REJECT;
        while (my $line = <$out>) {
            if ($line =~ /Serial Number:\s*([0-9A-Fa-f]+)/) {
                (my $s = lc($1)) =~ s/^0*//;
                $now{$s} = 1;
            }
            $whole = 1 if $line =~ /^\s*Next Update:/;
        }
        # not close()'s status: the server's own SIGCHLD handling may reap the
        # child first, and a request must not fail for that
        close($out);
        return RLM_MODULE_REJECT unless $whole;  # unreadable: fail closed
        %revoked = %now;
        $crl_key = $key;
    }
    return $revoked{$serial} ? RLM_MODULE_REJECT : RLM_MODULE_NOOP;
}

sub preacct {
    my $class = $RAD_REQUEST{'Class'};
    return RLM_MODULE_NOOP unless defined $class;
    $class = pack('H*', substr($class, 2)) if $class =~ /^0x[0-9a-fA-F]+$/;
    return RLM_MODULE_NOOP unless $class =~ /^@PREFIX@([0-9a-f]{32})$/;
    my $path = '@CLASSES@/' . $1;
    open(my $fh, '<', $path) or return RLM_MODULE_NOOP;
    my $name = <$fh>;
    close($fh);
    $RAD_REQUEST{'User-Name'} = $name;
    unlink($path) if ($RAD_REQUEST{'Acct-Status-Type'} // '') eq 'Stop';
    return RLM_MODULE_UPDATED;
}
"""


CLASSES_DIR = "classes"  # token -> identity of tunnelled sessions, until their Stop


def users_pl(users_json: Path, crl: str = "") -> str:
    """The perl of the VNO's server; with `crl`, the PIP certificate of every
    request is checked against it (re-read when the file changes)."""
    path = _quote(str(users_json))
    classes = _quote(str(users_json.parent / CLASSES_DIR))
    crl = _quote(crl or "/nonexistent")
    if "'" in path + classes + crl:
        raise ValueError(f"{path!r}: a user store's path cannot hold a single quote")
    return (USERS_PL.replace("@USERS@", path).replace("@CLASSES@", classes)
            .replace("@PREFIX@", CLASS_PREFIX).replace("@CRL@", crl)
            .replace("@REVOKED_ATTR@", REVOKED_ATTR))


def proxy_conf(cfg: ProxyConfig) -> str:
    d = cfg.directory
    homes = []
    for h in cfg.homes:
        homes.append(f"""home_server {h.realm}_home {{
    type = auth+acct
    ipaddr = {h.address}
    port = {h.port}
    proto = tcp
    secret = {RADSEC_SECRET}
    response_window = {cfg.response_window}
    zombie_period = {cfg.response_window + 1}
    revive_interval = 10
    status_check = none
{_tls_block(cfg.tls, "    ", d, h.cn)}
}}
home_server_pool {h.realm}_pool {{
    type = fail-over
    home_server = {h.realm}_home
}}
realm {h.realm} {{
    auth_pool = {h.realm}_pool
    acct_pool = {h.realm}_pool
    nostrip
}}
""")
    return _main(d, "pip-radius") + "\n".join(homes) + f"""
proxy server {{
    default_fallback = no
}}
client authenticators {{
    ipaddr = 127.0.0.1
    secret = {cfg.secret}
}}
modules {{
{ALWAYS}
    eap {{
        default_eap_type = md5
        md5 {{
        }}
    }}
    realm suffix {{
        format = suffix
        delimiter = "@"
    }}
    linelog decisions {{
        filename = {d}/{DECISIONS_LOG}
        format = "{DECISION_FORMAT}"
    }}
}}
server pip {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {cfg.port}
    }}
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {cfg.port + 1}
    }}
    authorize {{
        suffix
        if (!&control:Proxy-To-Realm) {{
            update reply {{
                Reply-Message := "unknown realm"
            }}
            reject
        }}
    }}
    authenticate {{
        Auth-Type EAP {{
            eap
        }}
    }}
    post-proxy {{
    }}
    post-auth {{
        decisions
        Post-Auth-Type REJECT {{
            eap
            decisions
        }}
    }}
    preacct {{
        suffix
    }}
    accounting {{
        ok
    }}
}}
"""


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n\r\0'):
        raise ValueError(f"{text!r}: quotes, backslashes and line breaks are not allowed")
    return text


def write(directory: Path, conf: str, name: str, tls: Tls | None = None) -> Path:
    """The configuration `name` in `directory` (0700; the file 0600: it holds
    the authenticators' secret), with the trust file `tls` needs."""
    private_dir(directory)
    for sub in ("log", "run"):
        private_dir(directory / sub)
    if tls is not None and tls.crl:
        ca_path_links(directory / CA_PATH, tls)
    return write_private(directory / f"{name}.conf", conf)


def ca_path_links(target: Path, tls: Tls) -> Path:
    """An OpenSSL CA directory holding links `<hash>.0` to the CA
    certificate and `<hash>.r0` to its CRL (not copies: the lab replaces the
    player's CRL file on each revocation, and a reload reads the new one)."""
    done = subprocess.run(["openssl", "x509", "-subject_hash", "-noout", "-in", tls.ca],
                          capture_output=True, text=True, check=True)
    digest = done.stdout.strip()
    private_dir(target)
    for old in target.iterdir():
        old.unlink()
    (target / f"{digest}.0").symlink_to(Path(tls.ca).resolve())
    (target / f"{digest}.r0").symlink_to(Path(tls.crl).resolve())
    return target
