// Thin fixes to the emulator where it differs from MongoDB in ways dbkit's
// tests depend on. They patch the in-memory storage adapter of one server:
//
// 1. Any _id type. The emulator keys documents by ObjectId hex and turns
//    every _id into an ObjectId, so a string _id (dbkit's ids are strings)
//    fails to insert. Documents are keyed here by the _id's type and value.
// 2. Unique indexes. The emulator records { unique: true } on createIndexes
//    but never checks it on insert or update. Here every insert and
//    replacement checks each unique index of the collection (a missing
//    field counts as null, as in MongoDB) and fails with code 11000 and
//    MongoDB's message shape "... index: <name> dup key". The server runs
//    JavaScript on one thread and the check and the write happen without
//    an await between them, so concurrent inserts are serialized.
// 3. Indexes after a drop. The emulator's per-collection index cache
//    outlives dropping the collection, so createIndexes after a drop
//    believes the indexes exist and never records them again (and the
//    cache is rebuilt with ObjectId-only code). The cache is reloaded from
//    the storage on every use instead, and a unique index built over
//    existing documents checks them like an insert.
import { ObjectId } from 'bson';
import { IndexEngine } from '@push.rocks/smartmongo/dist_ts/congodb/engine/IndexEngine.js';

function keyOf(id) {
  if (id && id._bsontype === 'ObjectId') return 'o:' + id.toHexString();
  return 's:' + JSON.stringify(id);
}

function valueAt(doc, path) {
  let cur = doc;
  for (const seg of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !(seg in cur)) return null;
    cur = cur[seg];
  }
  return cur === undefined ? null : cur;
}

function tuple(doc, keySpec) {
  return JSON.stringify(Object.keys(keySpec).map((p) => {
    const v = valueAt(doc, p);
    return v && v._bsontype === 'ObjectId' ? { $oid: v.toHexString() } : v;
  }));
}

function duplicate(db, coll, name) {
  const e = new Error(`E11000 duplicate key error collection: ${db}.${coll} index: ${name} dup key`);
  e.code = 11000;
  return e;
}

function checkUnique(st, db, coll, doc, selfKey) {
  const indexes = (st.indexes.get(db) && st.indexes.get(db).get(coll)) || [];
  const docs = st.ensureCollection(db, coll);
  for (const ix of indexes) {
    if (!ix.unique || ix.name === '_id_') continue;
    const t = tuple(doc, ix.key);
    for (const [k, other] of docs) {
      if (k !== selfKey && tuple(other, ix.key) === t) throw duplicate(db, coll, ix.name);
    }
  }
}

IndexEngine.prototype.initialize = async function () {
  const specs = await this.storage.getIndexes(this.dbName, this.collName);
  this.indexes = new Map(specs.map((ix) => [ix.name, { ...ix, entries: new Map() }]));
  this.initialized = true;
};

IndexEngine.prototype.createIndex = async function (key, options) {
  await this.initialize();
  const name = (options && options.name) || this.generateIndexName(key);
  if (this.indexes.has(name)) return name;
  if (options && options.unique) {
    const seen = new Set();
    for (const doc of this.storage.ensureCollection(this.dbName, this.collName).values()) {
      const t = tuple(doc, key);
      if (seen.has(t)) throw duplicate(this.dbName, this.collName, name);
      seen.add(t);
    }
  }
  await this.storage.saveIndex(this.dbName, this.collName, name, {
    key,
    unique: options && options.unique,
    sparse: options && options.sparse,
  });
  await this.initialize();
  return name;
};

export function applyFixes(server) {
  const st = server.getStorage();
  st.insertOne = async function (db, coll, doc) {
    const docs = this.ensureCollection(db, coll);
    const stored = { ...doc };
    if (stored._id === undefined || stored._id === null) stored._id = new ObjectId();
    const k = keyOf(stored._id);
    if (docs.has(k)) throw duplicate(db, coll, '_id_');
    checkUnique(this, db, coll, stored, k);
    docs.set(k, stored);
    return stored;
  };
  st.findById = async function (db, coll, id) {
    return this.ensureCollection(db, coll).get(keyOf(id)) || null;
  };
  st.updateById = async function (db, coll, id, doc) {
    const docs = this.ensureCollection(db, coll);
    const k = keyOf(id);
    if (!docs.has(k)) return false;
    checkUnique(this, db, coll, doc, k);
    docs.set(k, doc);
    return true;
  };
  st.deleteById = async function (db, coll, id) {
    return this.ensureCollection(db, coll).delete(keyOf(id));
  };
}
