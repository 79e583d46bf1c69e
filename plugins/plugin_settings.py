"""Settings for the plugins in this folder (MLiy's ``plugin_settings.py``).

The plugin loader imports this file first; plugins read it with ``import plugin_settings``.
It is not a plugin itself. Change the values here, then restart the hub.
"""

# --- auth plugins (ldap.py, isso.py) ---------------------------------------------------

# Only directory groups whose names match this regular expression (re.search) become
# JupyterHub groups; None keeps all of the user's groups.
# Example: r"^(jupyter-|hub-admins$)"
AUTH_GROUP_PATTERN = None

# Where the directory's hub groups live. With a DN (or a list of DNs) here, a group
# directly under it is named by its CN ("cn=hub-admins,<this DN>" is "hub-admins") and
# groups anywhere else are left out; None names every group by its full DN
# ("cn=hub-admins,ou=groups,dc=corp,dc=example"). A CN alone never counts: a user who
# can create groups in another branch could otherwise name one "hub-admins".
# Example: "ou=groups,dc=corp,dc=example"
AUTH_GROUP_BASE_DN = None

# --- isso.py -------------------------------------------------------------------------------

# The domains whose users may sign in (required to use isso.py), the primary domain first.
# Users of the primary domain are named without it (alice@corp.example.com -> alice);
# users of the others keep it (alice@partner.example.com), so they never merge; users of
# any other domain are refused. Example: ["corp.example.com", "partner.example.com"]
ISSO_ALLOWED_DOMAINS = []

# --- route53.py --------------------------------------------------------------------------

# The hosted zone that receives one A record per notebook server (required to use
# route53.py). Example: "notebooks.example.com"
ROUTE53_ZONE_NAME = ""

# The zone's id, when a public and a private zone share ROUTE53_ZONE_NAME.
# Example: "Z0123456789ABCDEFGHIJ". None: look the zone up by name.
ROUTE53_ZONE_ID = None

# The record's name; {instance_name} is the server's instance name made into a DNS label,
# {zone} is ROUTE53_ZONE_NAME.
ROUTE53_NAME_PATTERN = "mliy-{instance_name}.{zone}"

# Time to live of the records, in seconds (a stopped and resumed server gets a new IP).
ROUTE53_TTL = 60

# Route 53 is a global service; boto3 still wants a region for the client.
ROUTE53_REGION = "us-east-1"

# Another endpoint (a moto server in tests and the demo); None: AWS.
ROUTE53_ENDPOINT_URL = None

# Wait until Route 53 reports the change INSYNC before the spawn goes on (up to 2 min).
ROUTE53_WAIT_FOR_SYNC = False
