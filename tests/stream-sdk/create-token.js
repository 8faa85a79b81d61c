'use strict';
// Prints StreamChat#createToken(userId, exp, iat) from Stream's official SDK.
// Usage: STREAM_API_SECRET=... node create-token.js <userId> <exp> <iat>
const { StreamChat } = require('stream-chat');

const [userId, exp, iat] = process.argv.slice(2);
const client = new StreamChat('sdk-check-key', process.env.STREAM_API_SECRET);
process.stdout.write(client.createToken(userId, Number(exp), Number(iat)) + '\n');
