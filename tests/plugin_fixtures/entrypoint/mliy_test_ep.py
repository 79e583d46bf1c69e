"""An installed plugin: both contracts in one module."""


def getAuthHeader():
    return "X-Ep-User"


def processAuthUserInfo(headers):
    return {"display_name": "From Entry Point"}


def processAuthUserGroups(headers):
    return ["ep-group"]


def configureAuthUser(user_info):
    return None


def cleanAuthUsername(username):
    return username


def dnsDisplayName(instance_name):
    return None


def createDnsEntry(instance_name, ip):
    return None


def deleteDnsEntry(instance_name, ip):
    return None
