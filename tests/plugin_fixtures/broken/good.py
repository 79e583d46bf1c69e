def getAuthHeader():
    return "REMOTE_USER"


def processAuthUserInfo(headers):
    return {}


def processAuthUserGroups(headers):
    return []


def configureAuthUser(user_info):
    return None


def cleanAuthUsername(username):
    return username
