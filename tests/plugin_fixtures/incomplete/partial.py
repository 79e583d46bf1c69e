def getAuthHeader():
    return "REMOTE_USER"


def cleanAuthUsername(username):
    return username
